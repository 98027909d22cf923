"""Console-script entry points of the server commands (``nexus-manager``, ``nexus-agent``).

The ``nexus-microvm`` distribution alone is the SDK and the CLI; the manager and the agent
need the ``server`` extra. Without it these commands say so in one line instead of a
traceback about a missing module.
"""

from __future__ import annotations

import sys

_HINT = (
    "{cmd}: the server packages are not installed; "
    'install them with: pip install "nexus-microvm[server]" (missing module: {mod})'
)


def manager() -> None:
    """``nexus-manager``."""
    try:
        from nexus.manager.admin_cli import main
    except ModuleNotFoundError as e:
        sys.exit(_HINT.format(cmd="nexus-manager", mod=e.name))
    main()


def agent() -> None:
    """``nexus-agent``."""
    try:
        from nexus.agent.daemon import main
    except ModuleNotFoundError as e:
        sys.exit(_HINT.format(cmd="nexus-agent", mod=e.name))
    main()
