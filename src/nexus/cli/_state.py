"""Per-invocation CLI state (global options) and the SDK client built from the context."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nexus.cli._config import Config, ConfigError, Context
from nexus.client import Client, TokenPair

# Interactive use: fail fast on a dead manager (the SDK default is 3 retries, 0.3 s backoff).
CLI_RETRIES = 2
CLI_BACKOFF = 0.2


class CliError(Exception):
    """An expected failure: printed as one red line on stderr, exit code 1."""


@dataclass
class CliState:
    """Global options: ``--context``, ``--output``, ``--quiet``."""

    context_name: str | None = None
    output_flag: str | None = None
    quiet: bool = False
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        """The config file, loaded on first use."""
        if self._config is None:
            self._config = Config.load()
        return self._config

    def context(self, *, required: bool = False) -> Context:
        """The selected context (``--context`` or the current one), possibly empty."""
        ctx = self.config.context(self.context_name)
        if ctx is None:
            if self.context_name and required:
                raise CliError(f"no context named '{self.context_name}' (see: nexus context list)")
            return Context(name=self.context_name or self.config.current_context or "default")
        return ctx

    @property
    def output(self) -> str:
        """``--output`` > the context's default > ``table``."""
        if self.output_flag:
            return self.output_flag
        try:
            ctx = self.config.context(self.context_name)
        except ConfigError:
            ctx = None
        return (ctx.output if ctx else None) or "table"

    def url(self) -> str:
        """``$NEXUS_URL`` > the context's url."""
        url = os.environ.get("NEXUS_URL") or self.context(required=True).url
        if not url:
            raise CliError("no manager URL: run `nexus login --url URL` or set NEXUS_URL")
        return url

    def client(self, *, authenticated: bool = True) -> Client:
        """An SDK client for the selected context; ``$NEXUS_TOKEN`` overrides its credentials.

        Session tokens refreshed by the SDK are written back to the context.
        """
        url = self.url()
        env_token = os.environ.get("NEXUS_TOKEN")
        if env_token:
            return Client(url, token=env_token, retries=CLI_RETRIES, backoff=CLI_BACKOFF)
        ctx = self.context(required=True)
        if ctx.token:
            return Client(url, token=ctx.token, retries=CLI_RETRIES, backoff=CLI_BACKOFF)
        if ctx.access_token or ctx.refresh_token:
            return Client(
                url,
                token=ctx.access_token,
                refresh_token=ctx.refresh_token,
                on_token_refresh=lambda pair: self._persist(ctx.name, pair),
                retries=CLI_RETRIES,
                backoff=CLI_BACKOFF,
            )
        if authenticated:
            raise CliError(
                f"not logged in (context '{ctx.name}'): run `nexus login` or set NEXUS_TOKEN"
            )
        return Client(url, token=None, retries=CLI_RETRIES, backoff=CLI_BACKOFF)

    def _persist(self, name: str, pair: TokenPair) -> None:
        cfg = Config.load(self.config.path)
        ctx = cfg.contexts.get(name)
        if ctx is None:
            return
        ctx.access_token, ctx.refresh_token = pair.access_token, pair.refresh_token
        cfg.save()
        self._config = cfg


_current = CliState()


def set_state(new: CliState) -> None:
    """Install the state of this invocation (the root callback does it)."""
    global _current
    _current = new


def state() -> CliState:
    """The state of the running command (one command per process)."""
    return _current
