"""A 1 MB line, \r progress redraws, a traceback on stderr, and a last line with no newline."""
import sys

print("first line")
print("x" * (1024 * 1024))
sys.stdout.write("10%\r20%\r30%\r")
sys.stdout.write("bar done\n")
sys.stdout.flush()
print("Traceback (most recent call last):", file=sys.stderr)
print('  File "train.py", line 1, in <module>', file=sys.stderr)
print("ValueError: not really", file=sys.stderr)
sys.stderr.flush()
sys.stdout.write("the end without newline")
