"""Background loops of the manager. Each loop that must run once per cluster takes a lease."""
