"""Frozen value objects shared by the node, the engines, the protocol codec and the API.

Payload fields (``data``, ``conn_info``, ``chan_info``) are raw JSON bytes: they are stored and spliced into
outgoing frames as they arrived and are never parsed on the fan-out path.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar, dataclass_transform

from node.tagsfilter import TagsFilter

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def record(cls: type[_T]) -> type[_T]:
    """A frozen dataclass for the type checker that is built like a plain one at run time: a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``, which made a ``Publication``
    cost ~2.5x a plain one (~1.5 µs, a tenth of a batch publish's CPU). Values keep their hash and equality;
    mypy rejects assignments to their fields as it does for frozen ones."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


@dataclass_transform(frozen_default=True, kw_only_default=True)
def kw_record(cls: type[_T]) -> type[_T]:
    """``record`` with keyword-only fields (so a subclass may add required fields after defaulted ones): the
    proxy hooks' requests and results, built once per proxied command."""
    return dataclass(slots=True, unsafe_hash=True, kw_only=True)(cls)


class Identity(Protocol):
    """Who a connection is: the base of the protocols through which lower layers name a client."""

    @property
    def id(self) -> str: ...

    @property
    def user(self) -> str: ...


class ClientState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


@record
class StreamPosition:
    """A position in a channel's history stream; ``offset`` 0 means "before the first publication"."""

    offset: int = 0
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is behind a connection in a channel: attached to client publications, presence and join/leave."""

    client: str
    user: str
    conn_info: bytes | None = None
    chan_info: bytes | None = None


@record
class Publication:
    """One message in a channel. ``offset`` is set only for channels that keep history."""

    data: bytes
    offset: int = 0
    info: ClientInfo | None = None
    tags: Mapping[str, str] | None = None
    time_ms: int = 0
    # Set by the broker when the publisher asked for delta and the broker knows the previous payload.
    delta: bool = False
    prev_data: bytes | None = None
    # The concrete channel of a publication delivered to a wildcard subscription (NATS broker), else "".
    channel: str = ""
    # Map channels (node/maps/): the entry's key, and whether this change removed it.
    key: str = ""
    removed: bool = False


@kw_record  # built once per map publication (its key differs): a frozen dataclass's __init__ costs ~2x
class PublishOptions:
    """How the broker stores and announces a publication."""

    history_size: int = 0
    history_ttl: float = 0.0
    history_meta_ttl: float = 0.0
    client_info: ClientInfo | None = None
    tags: Mapping[str, str] | None = None
    idempotency_key: str = ""
    idempotent_result_ttl: float = 300.0
    use_delta: bool = False
    key: str = ""  # map channels: the entry this publication sets or (``removed``) removes
    removed: bool = False
    # Map channels: the key's value before this change, the base of its fossil delta (the memory engine; Redis
    # reads it in the same atomic step as the change).
    key_base: bytes | None = None


@record
class PublishResult:
    """Where the publication landed; ``suppressed`` is true when an idempotency key matched a cached result (or,
    on a map channel, a key condition did not hold: ``suppress_reason`` says which, with Centrifugo's words)."""

    position: StreamPosition = StreamPosition()
    suppressed: bool = False
    suppress_reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryOptions:
    """A history read. ``limit`` 0 returns only the top position, -1 returns everything kept. A read starts a
    stream that does not exist (a new epoch), unless ``create`` is false: then its position is (0, "") (honoured
    by the memory broker, which the memory map store runs on)."""

    since: StreamPosition | None = None
    limit: int = 0
    reverse: bool = False
    history_meta_ttl: float = 0.0
    create: bool = True


@dataclass(frozen=True, slots=True)
class HistoryResult:
    publications: tuple[Publication, ...]
    position: StreamPosition


@dataclass(frozen=True, slots=True)
class PresenceStats:
    num_clients: int
    num_users: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeOptions:
    """Per-subscription behaviour resolved by the policy (namespace options, token claims, overrides)."""

    expire_at: int = 0  # unix seconds; 0 = the subscription never expires
    chan_info: bytes | None = None
    data: bytes | None = None  # custom data for the subscribe reply / push
    emit_presence: bool = False
    emit_join_leave: bool = False
    push_join_leave: bool = False
    enable_positioning: bool = False
    enable_recovery: bool = False
    recovery_mode_cache: bool = False
    history_meta_ttl: float = 0.0
    delta: bool = False
    recover_since: StreamPosition | None = None
    publish_debounce: int = 0  # ms, told in the subscribe result (client_publish_debounce_interval)
    tags_filter: TagsFilter | None = None  # only publications whose tags match reach this subscriber


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Where a new positioned subscription starts: what its reply tells the client, and where live delivery
    continues."""

    top: StreamPosition  # the stream's position when it was read: live publications continue after it
    reply_offset: int  # the offset the reply carries (the client's own after a stream recovery)
    publications: tuple[Publication, ...] = ()
    recovered: bool = False
    was_recovering: bool = False


@dataclass(frozen=True, slots=True)
class ChannelStat:
    num_clients: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """One node's entry in the API ``info`` result."""

    uid: str
    name: str
    version: str
    num_clients: int
    num_users: int
    num_subs: int
    num_channels: int
    uptime: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestInfo:
    """What the transport knows about the HTTP request behind a connection."""

    transport: str
    remote: str = ""
    headers: Mapping[str, str] | None = None  # the request's headers (only those a proxy forwards are kept)
