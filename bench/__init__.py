"""Benchmarks: Nexus against the raw VMM and a bare FastAPI app (``make bench``)."""
