"""TTL: VMs that delete themselves at ``expires_at``, with a warning state change before."""
