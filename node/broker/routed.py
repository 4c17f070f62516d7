"""Map channels on their own broker (Centrifugo's ``map_broker``): map channels' publications, streams and
PUB/SUB go to the map broker, everything else (and the control channel) to the engine's broker. The node tells
which channels are map channels (``route``); until it does, nothing is routed to the map broker."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from node.broker.base import Broker, BrokerEventHandler, PublishDone
from node.models import ClientInfo, HistoryOptions, HistoryResult, PublishOptions, PublishResult


def _never(channel: str) -> bool:
    return False


class RoutedBroker(Broker):
    def __init__(self, main: Broker, maps: Broker) -> None:
        self.main = main
        self.maps = maps
        self._is_map: Callable[[str], bool] = _never

    def route(self, is_map: Callable[[str], bool]) -> None:
        self._is_map = is_map

    def _for(self, channel: str) -> Broker:
        return self.maps if self._is_map(channel) else self.main

    async def start(self, handler: BrokerEventHandler) -> None:
        await self.main.start(handler)
        await self.maps.start(handler)

    async def close(self) -> None:
        await self.maps.close()
        await self.main.close()

    def _split(self, channels: Sequence[str]) -> tuple[list[str], list[str]]:
        main: list[str] = []
        maps: list[str] = []
        for channel in channels:
            (maps if self._is_map(channel) else main).append(channel)
        return main, maps

    async def subscribe(self, *channels: str) -> None:
        main, maps = self._split(channels)
        for broker, part in ((self.main, main), (self.maps, maps)):
            if part:
                await broker.subscribe(*part)

    async def unsubscribe(self, *channels: str) -> None:
        main, maps = self._split(channels)
        for broker, part in ((self.main, main), (self.maps, maps)):
            if part:
                await broker.unsubscribe(*part)

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        return await self._for(channel).publish(channel, data, opts)

    def publish_then(self, channel: str, data: bytes, opts: PublishOptions, done: PublishDone) -> None:
        self._for(channel).publish_then(channel, data, opts, done)

    async def publish_many(self, items: Sequence[tuple[str, bytes, PublishOptions]]) -> list[PublishResult | Exception]:
        if not any(self._is_map(channel) for channel, _, _ in items):
            return await self.main.publish_many(items)
        return await Broker.publish_many(self, items)  # one by one: each to its own broker, in order

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._for(channel).publish_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._for(channel).publish_leave(channel, info)

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        await self.main.publish_control(data, node_id)

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult:
        return await self._for(channel).history(channel, opts)

    async def remove_history(self, channel: str) -> None:
        await self._for(channel).remove_history(channel)

    def healthy(self) -> bool:
        return self.main.healthy() and self.maps.healthy()
