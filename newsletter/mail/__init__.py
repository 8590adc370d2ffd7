"""Outgoing mail: composing messages, transports, and the outbox worker."""
