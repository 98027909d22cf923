"""Prometheus metrics of the manager (``GET /metrics``)."""
