"""JSON-shaped values into protobuf messages, shared by the client protocol (``proto.py``) and the GRPC API.

The node builds replies and API results as JSON; both protobuf edges fill the equivalent message from the
decoded JSON. Every ``bytes`` field of both schemas holds raw JSON (``data``, ``info``, ``conn_info`` ...), so a
bytes field gets the value serialised back to JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# Descriptors are typed loosely (Any): the stubs describe both the pure-Python and the upb classes as unions,
# and these helpers only read attributes every implementation has.


def is_map(field: Any) -> bool:
    return bool(field.message_type is not None and field.message_type.GetOptions().map_entry)


def map_value(field: Any) -> Any:
    """The descriptor of a map field's values."""
    if field.message_type is None:
        raise TypeError(f"{field.name} is not a map")
    return field.message_type.fields_by_name["value"]


def fill(msg: Message, obj: Mapping[str, Any]) -> None:
    """Set ``msg``'s fields from a JSON object shaped like the message; unknown keys and nulls are skipped."""
    fields: Mapping[str, Any] = msg.DESCRIPTOR.fields_by_name
    for key, value in obj.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        target = getattr(msg, key)
        if is_map(field):
            if map_value(field).type == FieldDescriptor.TYPE_MESSAGE:
                for k, v in value.items():
                    fill(target[k], v)
            else:
                target.update(value)
        elif field.is_repeated:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    fill(target.add(), item)
            else:
                target.extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.SetInParent()  # an empty object is still "set" (an empty result, the {} publish reply)
            fill(target, value)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            setattr(msg, key, orjson.dumps(value))
        else:
            setattr(msg, key, value)
