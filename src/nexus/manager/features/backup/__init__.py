"""Backups of the manager's state: ``POST /v1/admin/backup`` and ``nexus-manager backup`` /
``restore`` (the archive format: :mod:`.archive`)."""
