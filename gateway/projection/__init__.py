"""The projector: the event streams into DuckDB and an in-memory view; the only writer of the projection."""
