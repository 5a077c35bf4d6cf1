"""Parsers of what trainers print and write (transformers/ms-swift output, TensorBoard files)."""
