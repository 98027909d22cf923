"""The SDK cannot drift from the API: every SDK model has exactly the fields of its OpenAPI
component in the document a live manager serves, with compatible types (a field the server
may send as null is optional in the SDK); every operation of the API has an SDK method on
both clients; every model is exported from ``nexus.client``."""

from __future__ import annotations

import types
import typing
from datetime import datetime
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import nexus.client as sdk
from nexus.client import AsyncClient, Client

# SDK model -> the OpenAPI component it mirrors.
MODELS: dict[type[BaseModel], str] = {
    sdk.Vm: "VmRead",
    sdk.VmNic: "VmNicRead",
    sdk.VmFirstBoot: "FirstBootRead",
    sdk.Image: "ImageRead",
    sdk.Network: "NetworkRead",
    sdk.Volume: "VolumeRead",
    sdk.VolumeAttachment: "VolumeAttachmentRead",
    sdk.PortForward: "PortForwardRead",
    sdk.Host: "HostRead",
    sdk.HostMetrics: "HostMetrics",
    sdk.JoinToken: "JoinTokenCreated",
    sdk.Leader: "LeaderRead",
    sdk.User: "UserRead",
    sdk.ApiToken: "ApiTokenRead",
    sdk.ApiTokenCreated: "ApiTokenCreated",
    sdk.AuditEvent: "AuditEventRead",
    sdk.Operation: "OperationRead",
    sdk.Snapshot: "SnapshotRead",
    sdk.Template: "TemplateRead",
    sdk.ExecResult: "ExecResult",
    sdk.MetricSample: "MetricSample",
    sdk.MetricsHistory: "MetricsHistory",
    sdk.WsTicket: "TicketRead",
    sdk.Me: "Me",
    sdk.Event: "EventRead",
    sdk.Notification: "NotificationRead",
    sdk.NotificationPreferences: "NotificationPrefsRead",
    sdk.Webhook: "WebhookRead",
    sdk.WebhookCreated: "WebhookCreated",
    sdk.WebhookDelivery: "DeliveryRead",
    sdk.Quota: "QuotaRead",
    sdk.Schedule: "ScheduleRead",
    sdk.ScheduleRun: "ScheduleRunRead",
    sdk.Group: "GroupRead",
    sdk.Function: "FunctionRead",
    sdk.FunctionVersion: "FunctionVersionRead",
    sdk.Invocation: "InvocationRead",
}

# operationId -> where the SDK does it ("" = on the client itself).
METHODS = {
    "auth_login": "login_with_password",
    "auth_refresh": "refresh",
    "auth_logout": "logout",
    "auth_me": "me",
    "health_ready": "health",
    "tokens_create": "tokens.create",
    "tokens_list": "tokens.list",
    "tokens_delete": "tokens.delete",
    "users_create": "users.create",
    "users_list": "users.list",
    "users_get": "users.get",
    "users_update": "users.update",
    "users_delete": "users.delete",
    "audit_list": "audit.list",
    "operations_list": "operations.list",
    "operations_get": "operations.get",
    "operations_cancel": "operations.cancel",
    "events_list": "events.list",
    "events_stream": "events.stream",
    "notifications_list": "notifications.list",
    "notifications_summary": "notifications.unread_count",
    "notifications_update": "notifications.read",
    "notifications_read_all": "notifications.read_all",
    "notifications_get_preferences": "notifications.preferences",
    "notifications_set_preferences": "notifications.set_preferences",
    "webhooks_create": "webhooks.create",
    "webhooks_list": "webhooks.list",
    "webhooks_get": "webhooks.get",
    "webhooks_update": "webhooks.update",
    "webhooks_delete": "webhooks.delete",
    "webhooks_list_deliveries": "webhooks.deliveries",
    "webhooks_redeliver": "webhooks.redeliver",
    "webhooks_test": "webhooks.test",
    "vms_create": "vms.create",
    "vms_list": "vms.list",
    "vms_get": "vms.get",
    "vms_update": "vms.update",
    "vms_delete": "vms.delete",
    "vms_start": "vms.start",
    "vms_stop": "vms.stop",
    "vms_reboot": "vms.reboot",
    "vms_pause": "vms.pause",
    "vms_resume": "vms.resume",
    "vms_console": "vms.console",
    "vms_clone": "vms.clone",
    "guest_exec": "vms.exec",
    "guest_shell_ticket": "vms.ws_ticket",
    "guest_metrics": "vms.metrics",
    "guest_metrics_history": "vms.metrics_history",
    "snapshots_create": "snapshots.create",
    "snapshots_list": "snapshots.list",
    "snapshots_get": "snapshots.get",
    "snapshots_delete": "snapshots.delete",
    "snapshots_restore": "snapshots.restore",
    "templates_create": "templates.create",
    "templates_list": "templates.list",
    "templates_get": "templates.get",
    "templates_update": "templates.update",
    "templates_delete": "templates.delete",
    "templates_instantiate": "templates.instantiate",
    "hosts_create_join_token": "hosts.join_token",
    "hosts_list": "hosts.list",
    "hosts_get": "hosts.get",
    "hosts_delete": "hosts.delete",
    "hosts_metrics": "hosts.metrics",
    "hosts_drain": "hosts.drain",
    "hosts_undrain": "hosts.undrain",
    "system_list_leaders": "hosts.leaders",
    "images_build": "images.build",
    "images_import": "images.import_",
    "images_upload": "images.upload",
    "images_list": "images.list",
    "images_get": "images.get",
    "images_update": "images.update",
    "images_delete": "images.delete",
    "networks_create": "networks.create",
    "networks_list": "networks.list",
    "networks_get": "networks.get",
    "networks_update": "networks.update",
    "networks_delete": "networks.delete",
    "volumes_create": "volumes.create",
    "volumes_list": "volumes.list",
    "volumes_get": "volumes.get",
    "volumes_update": "volumes.update",
    "volumes_delete": "volumes.delete",
    "volumes_list_attached": "volumes.list_for_vm",
    "volumes_attach": "volumes.attach",
    "volumes_detach": "volumes.detach",
    "containers_create": "containers.create",
    "containers_list": "containers.list",
    "containers_get": "containers.get",
    "containers_update": "containers.update",
    "containers_delete": "containers.delete",
    "containers_start": "containers.start",
    "containers_stop": "containers.stop",
    "containers_restart": "containers.restart",
    "containers_exec": "containers.exec",
    "containers_logs": "containers.logs",
    "containers_create_shell_ticket": "containers.shell_ticket",
    "containers_pull_image": "container_images.pull",
    "containers_import_image": "container_images.import_archive",
    "containers_list_images": "container_images.list",
    "containers_get_image": "container_images.get",
    "containers_delete_image": "container_images.delete",
    "port_forwards_create": "port_forwards.create",
    "port_forwards_list": "port_forwards.list",
    "port_forwards_delete": "port_forwards.delete",
    "vms_extend": "vms.extend",
    "quotas_me": "quotas.me",
    "quotas_get": "quotas.get",
    "quotas_set": "quotas.set",
    "schedules_create": "schedules.create",
    "schedules_list": "schedules.list",
    "schedules_get": "schedules.get",
    "schedules_update": "schedules.update",
    "schedules_delete": "schedules.delete",
    "schedules_list_runs": "schedules.runs",
    "functions_create": "functions.create",
    "functions_list": "functions.list",
    "functions_get": "functions.get",
    "functions_update": "functions.update",
    "functions_delete": "functions.delete",
    "functions_list_versions": "functions.versions",
    "functions_set_alias": "functions.set_alias",
    "functions_delete_alias": "functions.delete_alias",
    "functions_invoke": "functions.invoke",
    "functions_list_invocations": "functions.invocations",
    "functions_get_invocation": "functions.invocation",
    "functions_get_invocation_logs": "functions.logs",
    "groups_create": "groups.create",
    "groups_list": "groups.list",
    "groups_get": "groups.get",
    "groups_update": "groups.update",
    "groups_delete": "groups.delete",
    "groups_scale": "groups.scale",
    "admin_backup": "backup",
}
# The agent's side of the API (nexus-agent speaks it, not SDK users), and probes.
NOT_FOR_SDK = {
    "hosts_register",
    "hosts_heartbeat",
    "hosts_image_file",
    "health_live",
    "health_startup",
    "notifications_post_alerts",  # Alertmanager's webhook receiver, not an SDK call
    "monitoring_metrics",  # for Prometheus (scrape token), not for SDK users
}
# Sync-only conveniences that read local files (the async client has no file helpers yet).
SYNC_ONLY = {"images_import", "images_upload"} | {
    # AsyncClient.containers has create/list/get/stop/delete; the rest is sync-only so far
    "containers_update", "containers_start", "containers_restart", "containers_exec",
    "containers_logs", "containers_pull_image", "containers_import_image",
    "containers_list_images", "containers_get_image", "containers_delete_image",
    "containers_create_shell_ticket",
}  # fmt: skip


@pytest.fixture(scope="module")
def document(manager_url: str) -> dict[str, Any]:
    r = httpx.get(f"{manager_url}/openapi.json")
    r.raise_for_status()
    return dict(r.json())


def _kinds_of_schema(schema: dict[str, Any]) -> set[str]:
    if not schema:
        return {"any"}
    if "$ref" in schema:
        return {"object"}
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return set().union(*(_kinds_of_schema(s) for s in schema[key]))
    if "allOf" in schema:
        return {"object"}
    if "enum" in schema or "const" in schema:
        return {"string"} if schema.get("type", "string") == "string" else {schema["type"]}
    t = schema.get("type")
    if t == "string" and schema.get("format") == "date-time":
        return {"datetime"}
    if isinstance(t, list):
        return set(t)
    return {t} if t else {"any"}


def _kinds_of_annotation(tp: Any) -> set[str]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return {"any"}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds_of_annotation(a) for a in typing.get_args(tp)))
    if origin is typing.Literal:
        return {"string"} if all(isinstance(a, str) for a in typing.get_args(tp)) else {"any"}
    if origin is not None:
        tp = origin
    simple = {
        type(None): "null",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        datetime: "datetime",
        list: "array",
        dict: "object",
    }
    if tp in simple:
        return {simple[tp]}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {"object"}
    return {"any"}


def _compatible(sdk_kinds: set[str], api_kinds: set[str]) -> bool:
    if "any" in sdk_kinds or "any" in api_kinds:
        return True
    widened = set(sdk_kinds)
    if "number" in widened:
        widened.add("integer")  # a float field takes an int
    return api_kinds <= widened


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: m.__name__)
def test_sdk_model_matches_the_served_schema(model: type[BaseModel], document: Any) -> None:
    component = document["components"]["schemas"][MODELS[model]]
    api_fields = component["properties"]
    sdk_fields = model.model_fields
    assert set(sdk_fields) == set(api_fields), (
        f"{model.__name__} vs {MODELS[model]}: only in the SDK "
        f"{sorted(set(sdk_fields) - set(api_fields))}, only in the API "
        f"{sorted(set(api_fields) - set(sdk_fields))}"
    )
    required = set(component.get("required", []))
    for name, field in sdk_fields.items():
        api = _kinds_of_schema(api_fields[name])
        mine = _kinds_of_annotation(field.annotation)
        assert _compatible(mine, api), f"{model.__name__}.{name}: SDK {mine} vs API {api}"
        if field.is_required():
            assert name in required, f"{model.__name__}.{name}: required in the SDK only"


def _resolve(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def test_every_operation_has_an_sdk_method(document: Any) -> None:
    ops = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    unmapped = ops - set(METHODS) - NOT_FOR_SDK
    assert not unmapped, f"operations without an SDK method: {sorted(unmapped)}"
    assert not (set(METHODS) - ops), f"SDK map names gone operations: {set(METHODS) - ops}"
    sync_client = Client("http://127.0.0.1:9")
    async_client = AsyncClient("http://127.0.0.1:9")
    missing = []
    for op, where in METHODS.items():
        if not callable(_resolve(sync_client, where)):
            missing.append(f"Client.{where} ({op})")
        if op not in SYNC_ONLY and not callable(_resolve(async_client, where)):
            missing.append(f"AsyncClient.{where} ({op})")
    sync_client.close()
    assert not missing, missing


def test_every_model_is_exported() -> None:
    for model in MODELS:
        assert getattr(sdk, model.__name__) is model
        assert model.__name__ in sdk.__all__


def test_clone_and_image_update_speak_the_api(manager_url: str) -> None:
    """The body is valid (a bad one would be a 422): an unknown VM is the handler's 404."""
    from tests.cli.conftest import ADMIN_PASSWORD

    with Client.login(manager_url, "admin", ADMIN_PASSWORD) as c:
        with pytest.raises(sdk.NotFound):
            c.vms.clone("vm_missing", "twin", overrides={"vcpus": 2}, labels={"a": "b"})
        with pytest.raises(sdk.NotFound):
            c.images.update("img_missing", description="x")
        with pytest.raises(sdk.NotFound):
            c.templates.update("tpl_missing", description="x")
