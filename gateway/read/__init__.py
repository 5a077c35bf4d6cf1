"""Reads over the DuckDB projection: the API's queries and the read-only SQL endpoint."""
