"""System key/value rows (e.g. the JWT signing key shared by every manager replica) and leases."""
