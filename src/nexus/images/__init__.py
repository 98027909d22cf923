"""Image artefacts that both the manager and the agent use: building the default image from
Debian packages (:mod:`nexus.images.build`) and checking kernels and ext4 root file systems
(:mod:`nexus.images.checks`). Content hashes and copies are :mod:`nexus.core.files`."""
