"""All-in-one mode: run an agent inside the manager process, registered with no manual step."""

from __future__ import annotations

from sqlalchemy import select

from nexus.core.logging import get_logger
from nexus.manager.features.hosts.service import healthy_host_count, mint_system_join_token
from nexus.manager.features.users.models import User
from nexus.manager.platform.appstate import ManagerState

log = get_logger(__name__)


async def start(state: ManagerState) -> None:
    """Start-up hook: mint a join token and start the embedded agent as a task."""
    state.extras.setdefault("ready_checks", {})["hosts"] = healthy_host_count
    if not state.settings.embedded_agent:
        return
    from nexus.agent.daemon import run_embedded

    async with state.db.session() as s:
        owner = (
            await s.execute(select(User.id).where(User.role == "admin").order_by(User.created_at))
        ).scalar()
        if owner is None:
            log.error("embedded_agent.no_admin")
            return
        token = await mint_system_join_token(s, owner)
    url = state.settings.resolved_public_url()
    log.info("embedded_agent.starting", manager_url=url)
    state.spawn(run_embedded(state.settings, url, token), name="embedded-agent")
