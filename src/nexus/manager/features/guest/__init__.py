"""Inside the guest: exec, interactive shells, console follow and metrics."""
