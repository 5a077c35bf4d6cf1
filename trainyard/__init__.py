"""The `trainyard` command: the composition root that starts gateways, agents and NATS."""
