"""config.toml -> frozen, validated objects.

Every mistake is a ConfigError naming the file, the key path and what is wrong,
raised before any database or network is touched. Secrets are not read when the file is
loaded: the config keeps where each one comes from (a SecretSource: environment variable or
file), and only the commands that send resolve them (Config.with_secrets), so the read-only
commands work where the keys are not available (under systemd they exist only while the
service runs). A resolved key is wrapped in Secret, which never prints.

One module per job: model (the frozen objects), secrets, values (durations, listen
addresses, http URLs), dburl (database URLs, `redact_url`), reader (walking the TOML tree),
settings (the keys a destination type declares for itself), registry (destination types,
built in and installed) and loading (load_config). Nothing here loads SQLAlchemy or httpx.
The names below are the package's public surface.
"""

from syncd.config.dburl import redact_url
from syncd.config.loading import default_config_path, load_config, parse_listen
from syncd.config.model import (
    ALERT_FORMATS,
    DEFAULT_RETENTION,
    DEFAULT_STATE_URL,
    AlertsConfig,
    AudienceConfig,
    Config,
    DestinationConfig,
    GuardConfig,
    MetricsConfig,
    ScheduleConfig,
    SourceConfig,
)
from syncd.config.registry import DestinationType, TypeNotFound, destination_type, installed_types
from syncd.config.secrets import Secret, SecretSource, resolve_secret
from syncd.config.settings import Address, Choices, Number, Setting
from syncd.config.values import http_url_problem, parse_duration

__all__ = [
    "ALERT_FORMATS", "DEFAULT_RETENTION", "DEFAULT_STATE_URL", "Address", "AlertsConfig", "AudienceConfig",
    "Choices", "Config", "DestinationConfig", "DestinationType", "GuardConfig", "MetricsConfig", "Number",
    "ScheduleConfig", "Secret", "SecretSource", "Setting", "SourceConfig", "TypeNotFound",
    "default_config_path", "destination_type", "http_url_problem", "installed_types", "load_config",
    "parse_duration", "parse_listen", "redact_url", "resolve_secret",
]
