"""Returned mail and complaints: parse them, read them from where they arrive, take webhooks."""
