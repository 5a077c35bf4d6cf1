"""One attempt of one job on this host: run, stop and release, report, re-adopt."""
