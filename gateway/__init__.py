"""The gateway: REST API, auth, command publishing, the scheduler, the projector and queries."""
