"""The per-host agent: runs trainers, watches them, reports. It never decides placement."""
