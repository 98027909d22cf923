"""Schedules: cron-timed actions on VMs (and instance groups), run by the policy loop."""
