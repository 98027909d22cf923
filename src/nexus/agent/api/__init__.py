"""The agent's HTTP API (manager -> agent): :func:`nexus.agent.api.app.create_app` and one
router per concern, each built by ``router(runtime)`` — :mod:`.vms`, :mod:`.snapshots`,
:mod:`.guest` (exec, metrics, shell and console WebSockets), :mod:`.net` (networks, port
forwards, volumes)."""
