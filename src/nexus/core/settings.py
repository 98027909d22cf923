"""Settings: defaults < TOML file (``--config`` / ``NEXUS_CONFIG``) < environment (``NEXUS_*``).

One ``Settings`` object serves the manager, the agent and the all-in-one mode. Every key is
validated at start; a bad key or value stops start-up with one clear line naming it
(:func:`load_settings` raises :class:`SettingsError`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# NEXUS_* variables that belong to the command-line tools, not to Settings.
NOT_SETTINGS = frozenset(
    {
        "NEXUS_CONFIG",
        "NEXUS_MANAGER_URL",
        "NEXUS_JOIN_TOKEN",
        "NEXUS_URL",
        "NEXUS_TOKEN",
        "NEXUS_CONTEXT",
        "NEXUS_CONFIG_DIR",
        "NEXUS_CLI_CONFIG",
        "NEXUS_SCHEMATHESIS_EXAMPLES",
    }
)


#: The quota limits (issue 15), in display order. ``disk_mib`` is root disks + volumes.
QUOTA_LIMITS: tuple[str, ...] = (
    "vms",
    "vcpus",
    "memory_mib",
    "disk_mib",
    "volumes",
    "networks",
    "snapshots",
    "images",
    "api_tokens",
)
_OPERATOR_QUOTA = {
    "vms": 20,
    "vcpus": 40,
    "memory_mib": 65536,
    "disk_mib": 524288,
    "volumes": 20,
    "networks": 10,
    "snapshots": 50,
    "images": 10,
    "api_tokens": 20,
}
#: Built-in per-role defaults (-1: unlimited); setting ``quota_defaults`` changes them.
QUOTA_ROLE_DEFAULTS: dict[str, dict[str, int]] = {
    "admin": dict.fromkeys(QUOTA_LIMITS, -1),
    "operator": _OPERATOR_QUOTA,
    "viewer": {**dict.fromkeys(QUOTA_LIMITS, 0), "api_tokens": 10},
}


class SettingsError(Exception):
    """A configuration problem, with a message fit to print as one line per problem."""


class Settings(BaseSettings):
    """All Nexus settings. Environment variables are ``NEXUS_<KEY>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_", extra="forbid", validate_default=True)

    # --- manager ---------------------------------------------------------------------------
    database_url: str = Field(
        default="", description="SQLAlchemy async URL; empty = SQLite in state_dir/nexus.db"
    )
    state_dir: Path = Field(default=Path("/var/lib/nexus"), description="Persistent state root")
    cache_dir: Path = Field(
        default=Path("/var/cache/nexus"), description="Build cache (guest kernels, images)"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str = Field(default="", description="URL agents use to reach the manager")
    embedded_agent: bool = Field(default=True, description="Run an agent inside the manager")
    bootstrap_admin_password: str = Field(default="", description="Password for the first admin")
    secret_key: str = Field(
        default="", description="JWT signing key (>= 32 chars); empty = state_dir/jwt-keys.json"
    )
    access_token_ttl_s: int = Field(default=900, ge=30)
    list_cache_ttl_s: float = Field(
        default=1.0, ge=0, description="cache VM listings this long across replicas (0: off)"
    )
    auth_cache_ttl_s: float = Field(
        default=2.0, ge=0, description="cache successful authentications this long (0: off)"
    )
    refresh_token_ttl_s: int = Field(default=14 * 86400, ge=60)
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(default=8 * 1024**3, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True
    # rate limits (``limits`` strings, e.g. "10/minute")
    rate_limit_storage_url: str = "memory://"
    rate_limit_auth: str = "10/minute"
    rate_limit_create: str = "50/minute"
    rate_limit_expensive: str = "200/minute"
    rate_limits_enabled: bool = True
    host_heartbeat_timeout_s: int = Field(default=60, ge=5)
    reconcile_interval_s: float = Field(default=5.0, gt=0)
    reconcile_full_poll_s: float = Field(
        default=60.0,
        ge=0,
        description="the reconciler asks an agent for its VMs at least this often; between "
        "those calls, a host whose latest heartbeat (newer than the last call) agrees with the "
        "database is not called (0: call every agent on every pass)",
    )
    boot_timeout_s: float = Field(
        default=150.0, gt=0, description="how long the manager waits for a guest to be ready"
    )
    default_network_cidr: str = Field(
        default="10.77.0.0/24", description="CIDR of the 'default' network made at first start"
    )
    port_forward_range: str = Field(
        default="20000-29999", pattern=r"^\d{1,5}-\d{1,5}$", description="host ports to pick from"
    )
    metrics_interval_s: float = Field(default=15.0, gt=0, description="VM metrics sampling")
    metrics_retention_s: float = Field(default=7 * 86400, gt=0, description="keep samples")
    ws_ticket_ttl_s: float = Field(default=30.0, gt=0, le=3600, description="WebSocket tickets")

    # --- events, notifications, webhooks ---------------------------------------------------
    events_retention_days: float = Field(default=30, gt=0, description="keep events this long")
    events_retention_count: int = Field(
        default=1_000_000, ge=1000, description="keep at most this many events (newest)"
    )
    events_poll_s: float = Field(
        default=0.5, gt=0, le=10, description="how often a replica looks for others' new events"
    )
    notifications_retention_days: float = Field(default=90, gt=0)
    webhook_allowlist: list[str] = Field(
        default_factory=list,
        description="addresses/CIDRs webhooks may target although private or loopback (admin)",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60, description="per delivery")
    webhook_retry_base_s: float = Field(default=5.0, gt=0, description="first retry delay")
    webhook_retry_max_s: float = Field(default=3600.0, gt=0, description="longest retry delay")
    webhook_retry_window_s: float = Field(
        default=86400.0, gt=0, description="retry a delivery this long, then give up"
    )
    webhook_disable_after_s: float = Field(
        default=86400.0, gt=0, description="disable a webhook failing this long without success"
    )
    webhook_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="how often the dispatcher looks for work"
    )

    # --- agent -----------------------------------------------------------------------------
    agent_host: str = "127.0.0.1"
    agent_port: int = Field(default=8081, ge=1, le=65535)
    agent_name: str = Field(default="", description="Host name to register; empty = hostname")
    vmm_driver: Literal["auto", "qemu", "firecracker"] = "auto"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    agent_pool_connections: int = Field(
        default=256, ge=1, le=10000, description="connections open to all agents together"
    )
    agent_max_concurrency: int = Field(
        default=8, ge=1, le=1000, description="calls in flight to one agent at a time"
    )
    agent_connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    lease_ttl_s: float = Field(
        default=10.0,
        ge=2,
        le=300,
        description="a background loop's leader lease; another replica takes a loop over at "
        "most this long (plus a third of it) after its leader died",
    )
    loop_concurrency: int = Field(
        default=16, ge=1, le=1000, description="agents the reconciler and sampler call at once"
    )
    stop_timeout_s: float = Field(default=20.0, gt=0)
    qemu_bin: str = "qemu-system-x86_64"
    firecracker_bin: str = "firecracker"
    jailer_bin: str = Field(default="", description="Firecracker jailer; empty = no jailer")
    jailer_uid: int = Field(
        default=64000,
        ge=1,
        le=2**32 - 2,
        description="uid the jailer runs Firecracker as (never 0); an id no account or other "
        "service owns",
    )
    jailer_gid: int = Field(
        default=64000, ge=1, le=2**32 - 2, description="gid the jailer runs Firecracker as"
    )
    guest_ready_timeout_s: float = Field(default=60.0, gt=0)
    console_log_max_bytes: int = Field(default=1024 * 1024, ge=4096)
    snapshot_verify: Literal["changed", "always"] = Field(
        default="changed",
        description="restore re-hashes snapshot files: only those changed on disk since they "
        "were last hashed (size, mtime, ctime, inode), or always",
    )
    image_fetch: Literal["auto", "always"] = Field(
        default="auto",
        description="where the agent reads image files: auto = the manager's image directory "
        "when it is readable on this host (all-in-one, shared filesystem), else its own cache "
        "(<state_dir>/images, fetched from the manager and verified); always = the cache",
    )

    # --- tenant isolation: VMM sandbox and disks (issue 11) ------------------------------
    vmm_sandbox: bool = Field(
        default=True,
        description="run each QEMU as its VM's own unprivileged uid, in its own cgroup, under "
        "QEMU's seccomp filter (needs a root agent); false only for debugging",
    )
    vmm_uid_range: str = Field(
        default="64100-65099",
        pattern=r"^[1-9][0-9]*-[1-9][0-9]*$",
        description="FIRST-LAST: the uids (and equal gids) handed out one per VM to its VMM "
        "process; no account or other service may own them; never 0",
    )
    vmm_cgroup_parent: str = Field(
        default="nexus",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="cgroup under which each VM gets its own group (v2: <root>/<parent>/<vm>;"
        " v1: <root>/{memory,cpu,pids}/<parent>/<vm>)",
    )
    vmm_memory_overhead_mib: int = Field(
        default=192,
        ge=16,
        le=65536,
        description="memory a VMM may use beyond the guest's RAM before its cgroup stops it "
        "(QEMU under TCG measured ~90 MiB: 32 MiB code buffer, blobs, heap)",
    )
    vmm_pids_max: int = Field(
        default=256,
        ge=16,
        le=65536,
        description="most tasks (threads) one VMM's cgroup may hold",
    )
    # --- tenant isolation: networks and port forwards (issue 11) --------------------------
    network_pool: str = Field(
        default="10.77.0.0/16",
        description="private IPv4 range new networks get their CIDR from when none is given "
        "(also each user's 'default' network)",
    )
    network_prefix: int = Field(
        default=24, ge=16, le=29, description="prefix length of networks allocated from the pool"
    )
    port_forward_host_local: bool = Field(
        default=False,
        description="also DNAT connections the host itself makes to a published port "
        "(127.0.0.1, host addresses); off: forwards never capture host-local traffic",
    )
    agent_port_forward_range: str = Field(
        default="20000-29999",
        pattern=r"^\d{1,5}-\d{1,5}$",
        description="host ports this agent lets port forwards use (it refuses others, "
        "also for admins)",
    )
    guest_blocked_subnets: list[str] = Field(
        default_factory=list,
        description="management subnets guests may never reach through the host "
        "(169.254.0.0/16 is always blocked unless guest_allow_link_local)",
    )
    guest_allow_link_local: bool = Field(
        default=False, description="let guests reach 169.254.0.0/16 (cloud metadata) via the host"
    )
    guest_host_tcp_ports: list[int] = Field(
        default_factory=list,
        description="TCP ports of the host guests may open on their gateway address "
        "(default: none; all other guest traffic to the host is dropped)",
    )
    # --- tenant isolation: guest channel and ceilings (issue 11) --------------------------
    max_vm_vcpus: int = Field(
        default=8, ge=1, le=32, description="most vCPUs one VM may have (create and resize)"
    )
    max_vm_memory_mib: int = Field(
        default=16384, ge=128, le=256 * 1024, description="most memory (MiB) one VM may have"
    )
    max_vm_disk_mib: int = Field(
        default=65536, ge=64, le=1024 * 1024, description="largest root disk (MiB) of one VM"
    )
    max_volume_mib: int = Field(
        default=131072, ge=8, le=1024 * 1024, description="largest volume (MiB), create and grow"
    )
    disk_reserve_mib: int = Field(
        default=1024,
        ge=0,
        description="free disk (MiB) a host keeps beyond new root disks and volumes; placement "
        "and volume creation refuse what would eat into it (507)",
    )
    max_exec_output_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="cap of an exec's stdout and of its stderr (each), enforced by the manager "
        "(422 above it) and again by the agent, whatever the guest does",
    )
    max_exec_timeout_s: float = Field(
        default=3600.0, gt=0, le=86400, description="longest exec timeout a request may ask"
    )
    max_concurrent_execs_per_user: int = Field(
        default=4,
        ge=1,
        description="execs one user may have running at once, per manager replica (429 above)",
    )
    # --- images and uploads (issues 11, 12) -----------------------------------------------
    max_concurrent_uploads: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="image uploads one manager process receives at once; more get 503 with "
        "Retry-After (each holds disk bandwidth and up to max_upload_bytes of free space)",
    )
    image_check_uid: int = Field(
        default=64090,
        ge=1,
        le=2**32 - 2,
        description="uid (and equal gid) that e2fsck runs as when a root manager checks an "
        "uploaded or imported root file system; an id no account or other service "
        "owns, never 0",
    )
    image_check_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="longest an image's e2fsck -fn may run before the image is refused",
    )
    # --- control plane: secrets, tokens, proxies (issue 12) -------------------------------
    api_token_max_lifetime_days: int = Field(
        default=0,
        ge=0,
        le=3650,
        description="longest lifetime an API token may have, in days (0: no maximum); when "
        "set, tokens without expiry are refused and older tokens stop working at the maximum",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or CIDRs of reverse proxies whose X-Forwarded-For/-Proto the "
        "manager believes (empty: no proxy header is trusted, the TCP peer is the client)",
    )
    rate_limit_login_user: str = Field(
        default="5/minute;20/hour;100/day",
        description="failed logins allowed per username (';'-separated limits: an escalating "
        "backoff); counted across source addresses",
    )
    password_hash_workers: int = Field(
        default=2, ge=1, le=64, description="password hashes (argon2) computed at once"
    )
    audit_anonymous_window_s: float = Field(
        default=60.0,
        gt=0,
        description="unauthenticated 401s from one source address are one audit row per "
        "window, with a count",
    )
    # --- control plane: hosts and TLS (issue 12) -------------------------------------------
    sealing_key: str = Field(
        default="",
        description="Fernet key sealing host credentials in the database; empty = "
        "<state_dir>/sealing-keys.json (created 0600 on first use)",
    )
    allow_loopback_agents: bool = Field(
        default=False,
        description="accept agents registering a loopback agent_url (several agents on one "
        "machine, tests); the embedded agent is always allowed",
    )
    tls_cert_file: str = Field(
        default="",
        description="PEM certificate (chain) for HTTPS: the manager's with nexus-manager "
        "serve, the agent API's with nexus-agent; empty = plain HTTP",
    )
    tls_key_file: str = Field(default="", description="PEM private key of tls_cert_file")
    tls_ca_file: str = Field(
        default="",
        description="agent: CA bundle that verifies an https manager (empty = system CAs)",
    )
    manager_cert_sha256: str = Field(
        default="",
        description="agent: accept exactly the https manager certificate with this SHA-256 "
        "(hex of the DER, colons allowed) instead of verifying it against tls_ca_file or the "
        "system CAs (a self-signed manager certificate); the embedded agent pins the "
        "manager's own tls_cert_file",
    )
    insecure: bool = Field(
        default=False,
        description="agent: allow a plain-http manager URL on a non-loopback address (host "
        "tokens and image files then cross the network in clear); nexus-agent --insecure",
    )

    # --- policies: quotas, schedules, TTL, instance groups (issue 15) ----------------------
    quota_defaults: dict[str, dict[str, int]] = Field(
        default_factory=lambda: {r: dict(v) for r, v in QUOTA_ROLE_DEFAULTS.items()},
        description="per-role default quota limits ({role: {limit: n}}; -1 = unlimited); "
        "a role or limit left out keeps its built-in default; per-user overrides are set "
        "with PUT /v1/quotas/{user}",
    )
    policy_interval_s: float = Field(
        default=15.0,
        gt=0,
        le=30,
        description="how often the policy loop (schedules, TTL, instance groups, quota usage) "
        "runs in the replica holding its lease",
    )
    ttl_warning_s: float = Field(
        default=600.0,
        ge=0,
        description="how long before a VM's TTL expires its owner is warned (the VM's "
        "ttl_warned_at is set)",
    )
    max_ttl_s: int = Field(
        default=30 * 86400, ge=60, description="longest TTL (s) a VM may be given or extended to"
    )

    @field_validator("quota_defaults")
    @classmethod
    def _check_quota_defaults(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        merged = {r: dict(v) for r, v in QUOTA_ROLE_DEFAULTS.items()}
        for role, limits in value.items():
            if role not in merged:
                raise ValueError(f"unknown role '{role}' (roles: {', '.join(merged)})")
            for name, n in limits.items():
                if name not in QUOTA_LIMITS:
                    raise ValueError(f"unknown limit '{name}' (limits: {', '.join(QUOTA_LIMITS)})")
                if n < -1:
                    raise ValueError(f"{role}.{name}: a limit is >= 0, or -1 for unlimited")
                merged[role][name] = n
        return merged

    # --- observability and recovery (issue 18) --------------------------------------------
    metrics_enabled: bool = Field(
        default=True, description="serve Prometheus metrics at /metrics (manager and agent)"
    )
    metrics_scrape_token: str = Field(
        default="",
        description="bearer token a Prometheus scraper presents on /metrics (at least 16 "
        "characters); empty = only the addresses of metrics_scrape_allow may scrape",
    )
    metrics_scrape_allow: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="addresses or CIDRs that may scrape /metrics without the token",
    )
    backup_dir: Path = Field(
        default=Path(""),
        description="where POST /v1/admin/backup writes archives; empty = <state_dir>/backups",
    )
    backup_keep: int = Field(
        default=7, ge=1, le=10000, description="archives POST /v1/admin/backup keeps"
    )
    ui_dir: Path = Field(
        default=Path(""),
        description="the built web console served at / (index.html + assets/); empty = the "
        "one an installed wheel carries (nexus/manager/ui), else the source tree's ui/dist "
        "(built by scripts/install-deps.sh)",
    )

    @field_validator("manager_cert_sha256")
    @classmethod
    def _normalise_pin(cls, value: str) -> str:
        pin = value.replace(":", "").strip().lower()
        if pin and not re.fullmatch(r"[0-9a-f]{64}", pin):
            raise ValueError("must be 64 hex digits (a SHA-256 fingerprint), colons allowed")
        return pin

    @field_validator("metrics_scrape_token")
    @classmethod
    def _long_scrape_token(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("must be at least 16 characters (or empty: allowlist only)")
        return value

    @field_validator("metrics_scrape_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an address or CIDR") from exc
        return value

    def resolved_backup_dir(self) -> Path:
        """Where backups made through the API go."""
        if str(self.backup_dir) in ("", "."):
            return self.state_dir / "backups"
        return self.backup_dir

    def resolved_ui_dir(self) -> Path:
        """Where the built web console is (it may not exist: the manager then says how to
        build it at /)."""
        if str(self.ui_dir) in ("", "."):
            here = Path(__file__).resolve()
            packaged = here.parents[1] / "manager" / "ui"  # a wheel's (hatch_build.py)
            if (packaged / "index.html").is_file():
                return packaged
            return here.parents[3] / "ui" / "dist"
        return self.ui_dir

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside ``state_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.state_dir / 'nexus.db'}"

    def resolved_public_url(self) -> str:
        """The URL agents use to reach the manager (https when ``tls_cert_file`` is set)."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls_cert_file else "http"
        return f"{scheme}://{host}:{self.port}"


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown setting '{key}'")
        else:
            lines.append(f"{source}: setting '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings: defaults < TOML file < ``NEXUS_*`` environment < explicit overrides."""
    path = config_file or os.environ.get("NEXUS_CONFIG") or None
    file_values: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            file_values = tomllib.loads(p.read_text())
        except FileNotFoundError as exc:
            raise SettingsError(f"config file {p} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {p} is not valid TOML: {exc}") from exc
        unknown = sorted(set(file_values) - set(Settings.model_fields))
        if unknown:
            raise SettingsError("\n".join(f"{p}: unknown setting '{k}'" for k in unknown))
    env_keys = {
        k[len("NEXUS_") :].lower()
        for k in os.environ
        if k.startswith("NEXUS_") and k not in NOT_SETTINGS and not k.startswith("NEXUS_TEST")
    }
    unknown_env = sorted(k for k in env_keys if k not in Settings.model_fields)
    if unknown_env:
        raise SettingsError(
            "\n".join(f"environment: unknown setting NEXUS_{k.upper()}" for k in unknown_env)
        )
    # Environment beats the file: pass file values only for keys not set in the environment.
    init = {k: v for k, v in file_values.items() if k not in env_keys}
    init.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**init)
    except ValidationError as exc:
        raise SettingsError(_format_errors(exc, "settings")) from exc
