"""Images: an image stays while anything built on it exists."""

from __future__ import annotations

from pathlib import Path

import httpx

from nexus.core.ids import new_id
from nexus.manager.features.snapshots.models import Snapshot
from tests.api.conftest import import_image


async def test_image_in_use_by_a_snapshot_cannot_be_deleted(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path
) -> None:
    image = await import_image(client, admin, tmp_path)
    me = (await client.get("/v1/auth/me", headers=admin)).json()
    # a snapshot whose VM is long gone still needs the image (kernel; overlay disk's base)
    state = client.app.state.nexus  # type: ignore[attr-defined]
    async with state.db.sessionmaker() as s:
        s.add(
            Snapshot(
                id=new_id("snap"),
                name="keep",
                vm_id="vm_gone",
                vm_name="gone",
                image_id=image["id"],
                vcpus=1,
                memory_mib=128,
                created_by_user_id=me["user"]["id"],
                state="ready",
            )
        )
        await s.commit()
    r = await client.delete(f"/v1/images/{image['id']}", headers=admin)
    assert r.status_code == 409 and "1 snapshot(s)" in r.json()["detail"], r.text
    assert (await client.get(f"/v1/images/{image['id']}", headers=admin)).status_code == 200
    async with state.db.sessionmaker() as s:
        await s.execute(Snapshot.__table__.delete())
        await s.commit()
    assert (await client.delete(f"/v1/images/{image['id']}", headers=admin)).status_code == 204
