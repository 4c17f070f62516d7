"""Where a new subscription starts in a channel's stream: plain positioning, or recovery of what a returning
client missed (stream mode: the contiguous range after its offset; cache mode: only the latest publication)."""

from __future__ import annotations

from node.broker.base import Broker
from node.models import HistoryOptions, StreamPosition, StreamStart, SubscribeOptions


async def stream_start(broker: Broker, channel: str, opts: SubscribeOptions, since: StreamPosition | None,
                       max_publications: int) -> StreamStart:
    meta_ttl = opts.history_meta_ttl
    if since is None or not opts.enable_recovery:
        top = (await broker.history(channel, HistoryOptions(limit=0, history_meta_ttl=meta_ttl))).position
        return StreamStart(top, top.offset)
    if opts.recovery_mode_cache:
        latest = await broker.history(channel, HistoryOptions(limit=1, reverse=True, history_meta_ttl=meta_ttl))
        top = latest.position
        pubs = tuple(p for p in latest.publications if p.offset == top.offset)
        if pubs and since.epoch == top.epoch and since.offset == top.offset:
            pubs = ()  # the client already has the latest publication
        return StreamStart(top, top.offset - len(pubs), pubs, recovered=True, was_recovering=True)
    result = await broker.history(channel, HistoryOptions(since=since, limit=max_publications,
                                                          history_meta_ttl=meta_ttl))
    top, pubs = result.position, result.publications
    same_epoch = not since.epoch or since.epoch == top.epoch
    if same_epoch and not pubs and top.offset == since.offset:
        return StreamStart(top, since.offset, recovered=True, was_recovering=True)
    if same_epoch and pubs and pubs[0].offset == since.offset + 1 and pubs[-1].offset == top.offset:
        return StreamStart(top, since.offset, pubs, recovered=True, was_recovering=True)
    return StreamStart(top, top.offset, was_recovering=True)
