"""Persistence: every fact about sandboxes, keys and quotas lives here."""
