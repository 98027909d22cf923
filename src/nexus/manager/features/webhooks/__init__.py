"""Webhooks: events delivered to your HTTP endpoint, signed (Standard Webhooks), retried."""
