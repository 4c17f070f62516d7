"""The ``shared_poll`` options of a namespace and the top-level ``shared_poll`` section, with Centrifugo v6.8's
names and defaults (docs/server/shared_poll). ``keep_latest_data`` is a Centrifugo PRO key and is not declared:
the loader warns about it and it has no effect."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from node.config_fields import duration
from node.errors import ConfigError

MODES: Final = ("", "versionless", "versioned")


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedPollOptions:
    """A namespace's ``shared_poll`` object."""

    proxy_name: str = "default"
    refresh_interval: float = duration(10.0)
    refresh_batch_size: int = 1000
    max_keys_per_connection: int = 5000
    mode: str = "versionless"
    channel_shutdown_delay: float = duration(1.0)
    track_expired_extra_delay: float = duration(25.0)
    publish_enabled: bool = False

    @property
    def versioned(self) -> bool:
        return self.mode == "versioned"

    def validate(self, where: str) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"{where}: shared_poll.mode must be \"versionless\" or \"versioned\"")
        if self.refresh_interval <= 0:
            raise ConfigError(f"{where}: shared_poll.refresh_interval must be positive")
        if self.refresh_batch_size <= 0 or self.max_keys_per_connection <= 0:
            raise ConfigError(f"{where}: shared_poll.refresh_batch_size and max_keys_per_connection must be "
                              "positive")
        if self.channel_shutdown_delay < 0 or self.track_expired_extra_delay < 0:
            raise ConfigError(f"{where}: shared_poll durations must not be negative")
        if self.publish_enabled and not self.versioned:
            raise ConfigError(f"{where}: shared_poll publish_enabled is incompatible with versionless mode "
                              "(requires explicit versions)")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackSigningKeys:
    """The HMAC keys that sign track requests: all that node/sharedpoll/signature.py needs of the section. The
    previous key verifies signatures issued up to ``hmac_previous_secret_key_valid_until`` (unix seconds; 0 = no
    limit) while the keys rotate."""

    hmac_secret_key: str = ""
    hmac_previous_secret_key: str = ""
    hmac_previous_secret_key_valid_until: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedPollConfig(TrackSigningKeys):
    """The top-level ``shared_poll`` section: the track signatures' HMAC keys and the backend concurrency."""

    concurrency_limit: int = 64

    def __post_init__(self) -> None:
        if self.concurrency_limit < 0:
            raise ConfigError("shared_poll.concurrency_limit must not be negative")

    def check(self, subscription_types: Iterable[str]) -> None:
        """Centrifugo's load-time rule: a shared_poll namespace needs the key that signs its tracks."""
        if not self.hmac_secret_key and "shared_poll" in subscription_types:
            raise ConfigError('shared_poll.hmac_secret_key is required when subscription_type is "shared_poll"')
