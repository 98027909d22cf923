"""The CLI's config file: named contexts (kubectl-like), stored as TOML with mode 0600.

Location: ``$NEXUS_CLI_CONFIG`` (a file), else ``$NEXUS_CONFIG_DIR/config.toml``, else
``~/.nexus/config.toml``. Layout::

    current_context = "default"

    [contexts.default]
    url = "http://127.0.0.1:8080"
    access_token = "eyJ..."      # a password session (refreshed automatically) ...
    refresh_token = "..."
    # token = "nxs_..."          # ... or an API token
    output = "table"             # default output of this context
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTEXT_KEYS = ("url", "token", "access_token", "refresh_token", "output", "username")
OUTPUTS = ("table", "json", "yaml")


class ConfigError(Exception):
    """The config file is unreadable or invalid (reported as one line, exit 1)."""


def config_path() -> Path:
    """Where the config lives (see the module docstring)."""
    if explicit := os.environ.get("NEXUS_CLI_CONFIG"):
        return Path(explicit).expanduser()
    if directory := os.environ.get("NEXUS_CONFIG_DIR"):
        return Path(directory).expanduser() / "config.toml"
    return Path.home() / ".nexus" / "config.toml"


@dataclass
class Context:
    """One named context: where the manager is and how to authenticate."""

    name: str
    url: str | None = None
    token: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    output: str | None = None
    username: str | None = None

    def to_toml(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in CONTEXT_KEYS if getattr(self, k) is not None}

    @property
    def logged_in(self) -> bool:
        return bool(self.token or self.access_token)


@dataclass
class Config:
    """All contexts and the current one."""

    path: Path
    current_context: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        """Read the file (a missing file is an empty config)."""
        path = path or config_path()
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return cls(path=path)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"invalid config file {path}: {e}") from None
        cfg = cls(path=path, current_context=_opt_str(raw.get("current_context"), path))
        contexts = raw.get("contexts", {})
        if not isinstance(contexts, dict):
            raise ConfigError(f"invalid config file {path}: 'contexts' must be a table")
        for name, values in contexts.items():
            if not isinstance(values, dict):
                raise ConfigError(f"invalid config file {path}: context '{name}' is not a table")
            unknown = set(values) - set(CONTEXT_KEYS)
            if unknown:
                raise ConfigError(
                    f"invalid config file {path}: context '{name}' has unknown key(s) "
                    + ", ".join(sorted(unknown))
                )
            ctx = Context(name=name, **{k: _opt_str(v, path) for k, v in values.items()})
            if ctx.output is not None and ctx.output not in OUTPUTS:
                raise ConfigError(
                    f"invalid config file {path}: context '{name}' output must be one of "
                    + ", ".join(OUTPUTS)
                )
            cfg.contexts[name] = ctx
        return cfg

    def save(self) -> None:
        """Write atomically with mode 0600 (the file holds credentials)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = _dump(self)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".config.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def context(self, name: str | None) -> Context | None:
        """The named context, or the current one when ``name`` is None."""
        key = name or self.current_context
        return self.contexts.get(key) if key else None


def _opt_str(value: Any, path: Path) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"invalid config file {path}: expected a string, got {value!r}")


def _quote(value: str) -> str:
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def _key(name: str) -> str:
    if name and all(c.isalnum() or c in "-_" for c in name):
        return name
    return _quote(name)


def _dump(cfg: Config) -> str:
    lines = ["# Nexus CLI configuration (written by `nexus`; holds credentials)"]
    if cfg.current_context:
        lines.append(f"current_context = {_quote(cfg.current_context)}")
    for name, ctx in sorted(cfg.contexts.items()):
        lines.append("")
        lines.append(f"[contexts.{_key(name)}]")
        for k, v in ctx.to_toml().items():
            lines.append(f"{k} = {_quote(v)}")
    return "\n".join(lines) + "\n"
