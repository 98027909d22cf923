"""Quotas: per-user limits (per-role defaults, per-user overrides) checked atomically."""
