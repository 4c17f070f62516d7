"""Publication data mode (Centrifugo v6's ``publication_data_mode`` of the stream consumers): the message is
the publication's data itself, and where it goes comes from message attributes (Redis Stream entry fields,
NATS headers) named in the config: comma-separated channels, an idempotency key, a delta flag and tags.

One channel makes a ``publish``, several a ``broadcast``, run like any consumed command. A message without
channels is skipped, as in Centrifugo; one whose data is not JSON or whose delta flag is not a boolean is a
poison message (Centrifugo would retry it forever). ``version`` and ``version_epoch`` are read by Fugato's API
but not used (as over HTTP).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from node.consumers.base import Dispatcher
from node.consumers.config import PublicationDataModeConfig

_TRUE: Final = frozenset({"1", "t", "true", "T", "TRUE", "True"})
_FALSE: Final = frozenset({"0", "f", "false", "F", "FALSE", "False"})  # Go's strconv.ParseBool


async def dispatch_publication(dispatcher: Dispatcher, names: PublicationDataModeConfig, attributes: Mapping[str, str],
                               data: bytes) -> None:
    channels = [c for c in attributes.get(names.channels, "").split(",") if c]
    if not channels:
        dispatcher.skip("malformed", f"no channels in {names.channels!r}")
        return
    try:
        payload: Any = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        dispatcher.skip("malformed", f"publication data is not JSON: {e}")
        return
    delta = attributes.get(names.delta, "")
    if delta and delta not in _TRUE | _FALSE:
        dispatcher.skip("malformed", f"{names.delta} is not a boolean: {delta!r}")
        return
    params: dict[str, Any] = {"data": payload, "delta": delta in _TRUE}
    if names.idempotency_key and attributes.get(names.idempotency_key):
        params["idempotency_key"] = attributes[names.idempotency_key]
    if names.tags_prefix:
        tags = {k[len(names.tags_prefix):]: v for k, v in attributes.items() if k.startswith(names.tags_prefix)}
        if tags:
            params["tags"] = tags
    if len(channels) == 1:
        await dispatcher.run("publish", {**params, "channel": channels[0]})
    else:
        await dispatcher.run("broadcast", {**params, "channels": channels})
