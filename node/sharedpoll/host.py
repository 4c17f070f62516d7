"""What the shared poll service needs from the node that owns it and from a subscriber, as protocols: the
service sits below the node (node.py builds it) and so names neither ``Node`` nor the client session.
``node.Node`` and ``client.Client`` fit these by their shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from node.config import ChannelOptions
from node.maps.host import MapClient
from node.models import ClientInfo, PublishOptions, PublishResult, SubscribeOptions
from node.service_host import ServiceHost
from node.subscriptions import ChannelState, Observer


class PollClient(MapClient, Protocol):
    """A connection as the shared poll commands (a map client's needs, and its subscriptions to hold) and the
    fan-out of a key's change see it."""

    conn_info: bytes | None
    unidirectional: bool
    framing: str
    channels: dict[str, ChannelState]

    @property
    def info(self) -> ClientInfo: ...

    def frame(self, message: bytes) -> bytes: ...

    def enqueue_framed(self, frame: bytes) -> None: ...

    def insufficient_state(self, channel: str) -> None: ...


class PollPolicy(Protocol):
    def namespace(self, channel: str) -> ChannelOptions: ...

    async def subscribe(self, client: Any, channel: str, params: Mapping[str, Any],
                        ask: Callable[[], Awaitable[Any]] | None = None) -> SubscribeOptions: ...


class PollSubscriptions(Protocol):
    """The node's channel subscriptions: an observer gets a channel's publications from every node."""

    async def observe(self, channel: str, observer: Observer) -> None: ...

    def unobserve(self, channel: str, observer: Observer) -> None: ...


C_contra = TypeVar("C_contra", bound=PollClient, contravariant=True)


class PollHost(ServiceHost[PollPolicy], Protocol[C_contra]):
    """The node as the shared poll service uses it: configuration, policy, metrics, the step after a
    subscribe (presence, join), and the broker (``shared_poll_publish`` reaches every node through it)."""

    @property
    def subscriptions(self) -> PollSubscriptions: ...

    async def after_subscribe(self, client: C_contra, channel: str, opts: SubscribeOptions) -> None: ...

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult: ...
