"""Prints a little, then fails with exit code 3."""
import sys

for i in range(40):
    print(f"working {i}")
print("ERROR: out of patience", file=sys.stderr)
sys.exit(3)
