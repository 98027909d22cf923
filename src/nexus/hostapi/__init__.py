"""The manager <-> agent contract: typed wire models (:mod:`~nexus.hostapi.models`), the
manager's agent client (:mod:`~nexus.hostapi.agent_client`), the one translation of agent errors
into problems (:mod:`~nexus.hostapi.problems`), guest boot helpers (:mod:`~nexus.hostapi.guestboot`)
and MAC helpers (:mod:`~nexus.hostapi.mac`).

Both the manager and the agent import this package; neither imports the other.
"""
