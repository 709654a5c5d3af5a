"""The config as frozen objects: what load_config (loading.py) returns and the rest of syncd
reads. Nothing here reads a file, the environment or a secret by itself."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from syncd.config.registry import DestinationClass, destination_type
from syncd.config.secrets import Secret, SecretSource, resolve_secret
from syncd.config.settings import address_key
from syncd.errors import ConfigError

DEFAULT_STATE_URL = "sqlite:///syncd-state.db"
DEFAULT_RETENTION = timedelta(days=30)


@dataclass(frozen=True)
class ScheduleConfig:
    interval: timedelta = timedelta(hours=2)
    jitter: timedelta = timedelta(hours=1)
    run_at_start: bool = True
    max_send_time: timedelta | None = None  # None: the interval

    @property
    def send_limit(self) -> timedelta:
        """How long a run may go on starting new sends: what is left waits for the next run."""
        return self.max_send_time or self.interval


@dataclass(frozen=True)
class SourceConfig:
    name: str
    url: str


@dataclass(frozen=True)
class DestinationConfig:
    """One [destinations.NAME] table: the keys every destination has, and in `settings` the
    type's own (declared by its class, e.g. `endpoint` at Nat, `base_url` and `bulk_size` at
    User.com), checked and with their defaults filled in."""

    name: str
    type: str
    api_key: Secret | SecretSource  # a SecretSource until Config.with_secrets() resolves it
    rate_limit: float | None  # requests per second (config: per-type default); None = unpaced
    concurrency: int
    timeout: float  # seconds per request
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> DestinationClass:
        """The destination's class (config/registry.py): its settings, defaults and needs."""
        return destination_type(self.type)

    @property
    def url(self) -> str:
        """The destination's address (its `endpoint`, `base_url`, ...; a base URL ends in "/")."""
        key = address_key(self.kind.settings)
        if key is None:
            raise AttributeError(f"destination type {self.type!r} declares no address")
        return str(self.settings[key])

    @property
    def bulk_size(self) -> int | None:
        """Users per mass update; None where the type has no mass updates (no `bulk_size`)."""
        size = self.settings.get("bulk_size")
        return int(size) if size is not None else None

    @property
    def needs_email(self) -> bool:
        """The destination keys its users by email (Nat): a member without one is skipped."""
        return self.kind.needs_email

    @property
    def resolved_key(self) -> Secret:
        """The API key, for the code that sends: Config.with_secrets() resolved it first."""
        if not isinstance(self.api_key, Secret):
            raise RuntimeError(f"the API key of destination {self.name!r} was not resolved "
                               "(Config.with_secrets)")
        return self.api_key


@dataclass(frozen=True)
class GuardConfig:
    """When a run holds an audience's exits instead of sending them (see guards.py)."""

    max_exit_share: float = 0.5  # of the members a destination holds as `true`
    min_acknowledged: int = 10  # smaller audiences are never held


@dataclass(frozen=True)
class AudienceConfig:
    name: str
    key: str
    source: str
    destinations: tuple[str, ...]
    query: str
    max_exit_share: float = GuardConfig.max_exit_share  # [guards] value unless the audience sets its own


@dataclass(frozen=True)
class MetricsConfig:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


ALERT_FORMATS = ("json", "slack")


@dataclass(frozen=True)
class AlertsConfig:
    """[alerts]: where and when to push alerts (see run/alerts.py)."""

    # A Slack webhook URL is a credential: never logged, shown or stored. A SecretSource until
    # Config.with_secrets() resolves it, as the destinations' keys.
    webhook_url: Secret | SecretSource
    format: str = "json"
    pending_older_than: timedelta = timedelta(hours=6)
    after_failed_runs: int = 2

    def with_secret(self, config_path: str, environ: Mapping[str, str]) -> AlertsConfig:
        """The webhook URL read and checked; a ConfigError that says where it came from, never what it is."""
        url = resolve_secret(self.webhook_url, environ)
        parts = urlsplit(url.reveal())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            where = self.webhook_url.key if isinstance(self.webhook_url, SecretSource) else "alerts"
            raise ConfigError(config_path, where, "the webhook URL is not an http(s) URL")
        return replace(self, webhook_url=url)

    @property
    def resolved_url(self) -> Secret:
        """The webhook URL, for the code that sends: Config.with_secrets() resolved it first."""
        if not isinstance(self.webhook_url, Secret):
            raise RuntimeError("the alerts webhook URL was not resolved (Config.with_secrets)")
        return self.webhook_url


@dataclass(frozen=True)
class Config:
    path: str
    state_url: str
    schedule: ScheduleConfig
    sources: Mapping[str, SourceConfig]
    destinations: Mapping[str, DestinationConfig]
    audiences: tuple[AudienceConfig, ...]
    retention: timedelta = DEFAULT_RETENTION  # run history and finished ledger rows older than this go
    auto_migrate: bool = True  # sending commands create/upgrade the state schema; False: only `migrate`
    guards: GuardConfig = GuardConfig()
    metrics: MetricsConfig | None = None  # `syncd run` serves /metrics when set
    alerts: AlertsConfig | None = None  # alerts are pushed after each run when set
    # Where with_secrets() looks up api_key_env: the process environment unless load_config
    # was given another. Never printed (it holds the keys).
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False, compare=False)

    def with_secrets(self) -> Config:
        """This config with every secret read, for the commands that send. Raises the first
        ConfigError (missing variable or file); call it before any database or network work.
        Reading again is a no-op: resolved secrets are kept."""
        destinations = {name: replace(dest, api_key=resolve_secret(dest.api_key, self.environ))
                        for name, dest in self.destinations.items()}
        return replace(self.with_alert_secret(), destinations=destinations)

    def with_alert_secret(self) -> Config:
        """This config with only the alert webhook's URL read: `check` says whether a config
        with [alerts] could alert (a ConfigError naming where the URL should come from)."""
        return replace(self, alerts=self.alerts and self.alerts.with_secret(self.path, self.environ))
