"""Nexus: an open-source microVM platform."""

__version__ = "0.1.0"
