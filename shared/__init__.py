"""Types and helpers that both the gateway and the agent import.

Nothing here imports `gateway` or `agent`; the two sides meet only on NATS.
"""
