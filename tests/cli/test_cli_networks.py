"""``nexus network|volume|port-forward`` against a real manager (no VMs, no agent)."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from nexus.client import (
    AsyncClient,
    Client,
    Conflict,
    Network,
    NotFound,
    ValidationError,
    Volume,
)
from tests.cli.conftest import ADMIN_PASSWORD, Runner


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_network_create_without_cidr_uses_the_pool(logged_in: Runner) -> None:
    name = _name("pool")
    r = logged_in("network", "create", name, "-o", "json")
    assert r.code == 0, r.err
    net = json.loads(r.out)
    assert net["cidr"].startswith("10.77.") and not net["shared"]

    table = logged_in("network", "list")
    assert table.code == 0, table.err
    assert name in table.out and net["cidr"] in table.out
    assert "CIDR" in table.out.splitlines()[0]

    got = logged_in("network", "get", name, "-o", "yaml")
    assert got.code == 0, got.err
    assert yaml.safe_load(got.out)["id"] == net["id"]
    assert logged_in("network", "delete", name, "--yes").code == 0


def test_network_create_list_update_delete(logged_in: Runner) -> None:
    name = _name("net")
    r = logged_in("network", "create", name, "--cidr", "10.201.7.0/24", "--isolated", "-o", "json")
    assert r.code == 0, r.err
    net = json.loads(r.out)
    assert net["name"] == name and net["cidr"] == "10.201.7.0/24"
    assert net["gateway"] == "10.201.7.1"
    assert net["isolated"] is True and net["nat"] is True

    table = logged_in("network", "list")
    assert table.code == 0, table.err
    row = next(line for line in table.out.splitlines() if name in line)
    assert net["id"] in row and "10.201.7.0/24" in row and "10.201.7.1" in row

    listed = json.loads(logged_in("network", "list", "-o", "json").out)
    assert [n["id"] for n in listed if n["name"] == name] == [net["id"]]
    assert net["id"] in logged_in("-q", "network", "list").out.split()

    upd = logged_in("network", "update", name, "--no-nat", "-o", "json")
    assert upd.code == 0, upd.err
    assert json.loads(upd.out)["nat"] is False

    overlap = logged_in("network", "create", _name("net"), "--cidr", "10.201.7.0/25")
    assert overlap.code == 1
    _error(overlap.err)

    d = logged_in("network", "delete", name, "--yes")
    assert d.code == 0, d.err
    assert "deleted network" in d.err
    gone = logged_in("network", "get", net["id"])
    assert gone.code == 1
    assert "not found" in _error(gone.err)


def test_network_bad_cidr_shows_server_detail(logged_in: Runner) -> None:
    r = logged_in("network", "create", _name("net"), "--cidr", "8.8.8.0/24")
    assert r.code == 1
    line = _error(r.err)
    assert "private range" in line
    assert "request id" in line

    r = logged_in("network", "create", _name("net"), "--cidr", "10.0.0.1/24")
    assert r.code == 1
    assert "CIDR" in _error(r.err)


def test_volume_create_list_grow_delete(logged_in: Runner) -> None:
    name = _name("vol")
    r = logged_in("volume", "create", name, "--size", "64", "-o", "json")
    assert r.code == 0, r.err
    vol = json.loads(r.out)
    assert vol["id"].startswith("vol_")
    assert vol["size_mib"] == 64 and vol["filesystem"] == "ext4"
    assert vol["attachment"] is None

    table = logged_in("volume", "list")
    assert table.code == 0, table.err
    row = next(line for line in table.out.splitlines() if name in line)
    assert vol["id"] in row and "64" in row and "ext4" in row
    listed = json.loads(logged_in("volume", "list", "-o", "json").out)
    assert [v["id"] for v in listed if v["name"] == name] == [vol["id"]]

    grown = logged_in("volume", "grow", name, "--size", "1G", "-o", "json")
    assert grown.code == 0, grown.err
    assert json.loads(grown.out)["size_mib"] == 1024

    shrink = logged_in("volume", "grow", vol["id"], "--size", "128")
    assert shrink.code == 1
    assert "only grow" in _error(shrink.err)

    raw = logged_in("-q", "volume", "create", _name("raw"), "--size", "4", "--filesystem", "raw")
    assert raw.code == 0, raw.err
    raw_id = raw.out.strip()
    assert raw_id.startswith("vol_")

    for ref in (name, raw_id):
        d = logged_in("volume", "delete", ref, "--yes")
        assert d.code == 0, d.err
    gone = logged_in("volume", "get", vol["id"])
    assert gone.code == 1
    assert "not found" in _error(gone.err)


def test_volume_bad_size(logged_in: Runner) -> None:
    r = logged_in("volume", "create", _name("vol"), "--size", "lots")
    assert r.code == 2
    r = logged_in("volume", "create", _name("vol"), "--size", "4")  # ext4 needs 8 MiB
    assert r.code == 1
    assert "8 MiB" in _error(r.err)


def test_port_forward_on_missing_vm(logged_in: Runner) -> None:
    by_name = logged_in("port-forward", "list", "no-such-vm")
    assert by_name.code == 1
    assert "not found" in _error(by_name.err)

    by_id = logged_in("port-forward", "create", "vm_missing", "--guest-port", "22")
    assert by_id.code == 1
    assert "not found" in _error(by_id.err)

    delete = logged_in("port-forward", "delete", "vm_missing", "pf_missing")
    assert delete.code == 1
    assert "not found" in _error(delete.err)

    bad = logged_in("port-forward", "create", "vm_missing", "--guest-port", "0")
    assert bad.code == 2


def test_volume_attach_to_missing_vm(logged_in: Runner) -> None:
    r = logged_in("volume", "attach", "vm_missing", "whatever")
    assert r.code == 1
    assert "not found" in _error(r.err)
    r = logged_in("volume", "list", "--vm", "no-such-vm")
    assert r.code == 1
    assert "not found" in _error(r.err)


def test_sdk_networks_volumes_port_forwards(manager_url: str) -> None:
    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        net = c.networks.create(_name("sdk"), "10.202.3.0/28", nat=False, description="x")
        assert isinstance(net, Network)
        assert (net.gateway, net.nat, net.isolated, net.shared) == (
            "10.202.3.1",
            False,
            False,
            False,
        )
        assert c.networks.update(net.id, isolated=True).isolated is True
        assert net.id in [n.id for n in c.networks.list()]
        with pytest.raises(ValidationError):
            c.networks.create(_name("sdk"), "10.202.3.0/30")
        with pytest.raises(Conflict):
            c.networks.create(_name("sdk"), "10.202.3.0/29")
        c.networks.delete(net.id)
        with pytest.raises(NotFound):
            c.networks.get(net.id)

        vol = c.volumes.create(_name("sdk"), 16, filesystem="raw")
        assert isinstance(vol, Volume) and vol.filesystem == "raw"
        assert c.volumes.get(vol.name).id == vol.id  # the server also accepts names
        assert c.volumes.grow(vol.id, 32).size_mib == 32
        assert c.volumes.update(vol.id, description="d").description == "d"
        with pytest.raises(Conflict):
            c.volumes.grow(vol.id, 16)
        with pytest.raises(NotFound):
            c.volumes.attach("vm_missing", vol.id)
        with pytest.raises(NotFound):
            c.volumes.list_for_vm("vm_missing")
        c.volumes.delete(vol.id)

        with pytest.raises(NotFound):
            c.port_forwards.create("vm_missing", 22)
        with pytest.raises(NotFound):
            c.port_forwards.list("vm_missing").to_list()
        with pytest.raises(NotFound):
            c.port_forwards.delete("vm_missing", "pf_missing")


async def test_async_sdk_networks_volumes(manager_url: str) -> None:
    async with await AsyncClient.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        net = await c.networks.create(_name("asdk"), "10.203.0.0/24", isolated=True)
        assert (await c.networks.get(net.id)).isolated is True
        assert (await c.networks.update(net.id, name=net.name + "x")).name == net.name + "x"
        assert any(n.id == net.id for n in await c.networks.list().to_list())
        await c.networks.delete(net.id)

        vol = await c.volumes.create(_name("asdk"), 8)
        assert (await c.volumes.grow(vol.id, 9)).size_mib == 9
        assert vol.id in [v.id async for v in c.volumes.list()]
        await c.volumes.delete(vol.id)

        with pytest.raises(NotFound):
            await c.port_forwards.create("vm_missing", 80, host_port=20080, protocol="udp")
        with pytest.raises(NotFound):
            [p async for p in c.port_forwards.list("vm_missing")]
        with pytest.raises(NotFound):
            await c.volumes.detach("vm_missing", "vol_missing")


def test_template_update_and_image_update_commands(logged_in: Runner) -> None:
    name = f"tpl-{uuid.uuid4().hex[:6]}"
    r = logged_in("-q", "template", "create", name, "--memory", "256")
    assert r.code == 0, r.err
    r = logged_in("-o", "json", "template", "update", name, "-d", "small web", "--public")
    assert r.code == 0, r.err
    got = json.loads(logged_in("-o", "json", "template", "get", name).out)
    assert got["description"] == "small web" and got["public"] is True
    assert logged_in("template", "update", name).code == 2  # nothing to change
    missing = logged_in("image", "update", "img_missing", "--private")
    assert missing.code == 1 and "not found" in missing.err
    logged_in("template", "delete", name)
