"""`python -m trainyard`: the same as the `trainyard` command."""

from trainyard.cli import main

raise SystemExit(main())
