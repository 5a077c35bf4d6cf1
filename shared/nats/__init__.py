"""The NATS helpers both sides use: connection, users and permissions, provisioning, the pull feed."""
