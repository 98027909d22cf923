"""Notifications: per-user messages derived from events (a VM failed, an operation ended...)."""
