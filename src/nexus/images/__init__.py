"""Image artefacts: checks of kernels and root file systems that both the manager and the
agent use (see :mod:`nexus.images.checks`)."""
