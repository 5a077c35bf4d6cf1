"""The HTTP edge: parse, authorize, call a service, shape the answer; the one error mapping."""
