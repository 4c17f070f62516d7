"""What the map service needs from the node that owns it, and from a subscriber, as protocols: the service
sits below the node (node.py builds it) and so names neither ``Node`` nor the client session. ``node.Node``
and ``client.Client`` fit these by their shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from node.broker.base import PublishDone
from node.config import ChannelOptions
from node.models import (
    ClientInfo,
    HistoryOptions,
    HistoryResult,
    PublishOptions,
    PublishResult,
    SubscribeOptions,
)
from node.service_host import ServiceHost
from node.subscriptions import Subscribable, SubscribeSteps


class MapClient(Subscribable, Protocol):
    """A connection as the map commands see it."""

    @property
    def protocol(self) -> str: ...

    def channel_info(self, channel: str) -> ClientInfo: ...


class MapPolicy(Protocol):
    """The node's policy: a channel's namespace, and who may subscribe to or write a map."""

    def namespace(self, channel: str) -> ChannelOptions: ...

    async def subscribe(self, client: MapClient, channel: str, params: Mapping[str, Any]) -> SubscribeOptions: ...

    def check_map_write(self, client: MapClient, channel: str, *, remove: bool) -> ChannelOptions: ...


C_contra = TypeVar("C_contra", bound=MapClient, contravariant=True)  # the subscribe steps only take it


class MapHost(ServiceHost[MapPolicy], SubscribeSteps[C_contra], Protocol[C_contra]):
    """The node as the map service uses it: its configuration and policy, the channel's stream (publish,
    history), and the subscribe steps that make a map subscriber live. ``C_contra`` is the node's connection
    type, which the subscribe steps take back."""

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult: ...

    def publish_then(self, channel: str, data: bytes, opts: PublishOptions, done: PublishDone) -> None: ...

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult: ...

    async def remove_history(self, channel: str) -> None: ...
