"""Benchmarks of DESIGN §9 (make bench); each starts its own stack on free ports."""
