"""Process trees: spawning through the keeper helper, signals, exit status, the child environment."""
