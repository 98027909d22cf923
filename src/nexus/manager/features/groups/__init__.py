"""Instance groups: N VMs from one template, kept running and scaled by a CPU rule."""
