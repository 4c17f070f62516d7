"""What the map service needs from the node that owns it, and from a subscriber, as protocols: the service
sits below the node (node.py builds it) and so names neither ``Node`` nor the client session. ``node.Node``
and ``client.Client`` fit these by their shape."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Protocol, TypeVar

from node.config import ChannelOptions, Config
from node.metrics import Metrics
from node.models import (
    ClientInfo,
    ClientState,
    HistoryOptions,
    HistoryResult,
    Identity,
    PublishOptions,
    PublishResult,
    StreamPosition,
    StreamStart,
    SubscribeOptions,
)
from node.protocol.codec import Codec


class MapClient(Identity, Protocol):
    """A connection as the map commands see it."""

    codec: Codec

    @property
    def protocol(self) -> str: ...

    @property
    def state(self) -> ClientState: ...

    @property
    def channels(self) -> Collection[str]: ...

    @property
    def subscribing(self) -> AbstractSet[str]: ...

    def channel_info(self, channel: str) -> ClientInfo: ...

    def enqueue(self, message: bytes) -> None: ...

    def start_subscribing(self, channel: str) -> None: ...

    def done_subscribing(self, channel: str) -> None: ...


class MapPolicy(Protocol):
    """The node's policy: a channel's namespace, and who may subscribe to or write a map."""

    def namespace(self, channel: str) -> ChannelOptions: ...

    async def subscribe(self, client: MapClient, channel: str, params: Mapping[str, Any]) -> SubscribeOptions: ...

    def check_map_write(self, client: MapClient, channel: str, *, remove: bool) -> ChannelOptions: ...


C_contra = TypeVar("C_contra", bound=MapClient, contravariant=True)  # the subscribe steps only take it


class MapHost(Protocol[C_contra]):
    """The node as the map service uses it: its configuration and policy, the channel's stream (publish,
    history), and the subscribe steps that make a map subscriber live. ``C_contra`` is the node's connection
    type, which the subscribe steps take back."""

    @property
    def config(self) -> Config: ...

    @property
    def policy(self) -> MapPolicy: ...

    @property
    def metrics(self) -> Metrics: ...

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult: ...

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult: ...

    async def remove_history(self, channel: str) -> None: ...

    async def subscribe_client(self, client: C_contra, channel: str, opts: SubscribeOptions, *, server_side: bool,
                               since: StreamPosition | None = None,
                               reject_unrecovered: bool = False) -> StreamStart | None: ...

    def start_delivery(self, client: C_contra, channel: str, start: StreamStart | None) -> None: ...

    async def after_subscribe(self, client: C_contra, channel: str, opts: SubscribeOptions) -> None: ...
