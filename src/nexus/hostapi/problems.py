"""The one translation of an agent error into a manager problem (RFC 9457).

The manager's user asked the manager, not the host: an agent's answer becomes the problem
that describes the manager resource, with the agent's detail kept.

==========================  =====================================================
agent                        manager
==========================  =====================================================
unreachable (status 0)       502 upstream-error ("host agent unreachable")
wrong TLS certificate        502 upstream-error naming the pin mismatch
404 (VM/file not on host)    409 conflict: the manager knows the resource, the host
                             does not (run the reconciler or recreate it)
409 (state conflict)         409 conflict
422 (request refused)        422 validation-error (it came from the user's input)
anything else (5xx, 401)     502 upstream-error
==========================  =====================================================
"""

from __future__ import annotations

from nexus.core.errors import Conflict, Problem, UpstreamError, ValidationFailed
from nexus.hostapi.agent_client import AgentCertificateMismatch, AgentError


def agent_problem(exc: AgentError, what: str) -> Problem:
    """The problem for ``exc``, raised while the manager did ``what`` (e.g. ``"start"``)."""
    if isinstance(exc, AgentCertificateMismatch):
        return UpstreamError(f"{what}: {exc.detail}")
    if exc.status == 0:
        return UpstreamError(f"{what}: host agent unreachable ({exc.detail})")
    if exc.status == 404:
        return Conflict(f"{what}: the host does not know this resource ({exc.detail})")
    if exc.status == 409:
        return Conflict(f"{what}: {exc.detail}")
    if exc.status == 422:
        return ValidationFailed(f"{what}: {exc.detail}")
    return UpstreamError(f"{what}: {exc.detail}")
