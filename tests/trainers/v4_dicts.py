"""Prints what transformers 4.x's Trainer prints when the loss diverges: its logged dicts with
floats as numbers, and nan / inf bare (`{'loss': nan, ...}`, no Python literal)."""

import time

print("{'loss': 2.5, 'grad_norm': 1.25, 'learning_rate': 1e-05, 'epoch': 0.25}", flush=True)
print("{'loss': nan, 'grad_norm': inf, 'learning_rate': 1e-05, 'epoch': 0.5}", flush=True)
print("{'loss': nan, 'grad_norm': -inf, 'learning_rate': 1e-05, 'epoch': 0.75}", flush=True)
time.sleep(0.5)
