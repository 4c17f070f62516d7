"""Shared poll pieces without a server: the shipped example config, track signatures as Centrifugo's docs
make them (key rotation included), and option validation."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from node.config_load import load
from node.errors import ConfigError
from node.protocol import client_pb2 as pb
from node.protocol import proto
from node.proxy.shared_poll import _json_item
from node.sharedpoll import signature, wire
from node.sharedpoll.options import SharedPollConfig, SharedPollOptions

NOW = 1_800_000_000


def docs_signature(secret: str, user_id: str, channel: str, keys: list[str], ttl: int, now: int) -> str:
    """Centrifugo's documented Python example (with the time passed in)."""
    exp = now + ttl
    kh = hashlib.sha256("\x00".join(keys).encode()).hexdigest()
    payload = f"{now}\0{exp}\0{user_id}\0{channel}\0{kh}"
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return f"{now}:{exp}:{mac}"


def test_shipped_shared_poll_config_loads_cleanly() -> None:
    result = load(str(Path(__file__).resolve().parents[2] / "conf" / "config.sharedpoll.json"), {}, {})
    assert result.warnings == ()
    votes, drones = result.config.channel.namespaces
    assert votes.shared_poll.refresh_interval == 1.0 and not votes.shared_poll.versioned
    assert drones.shared_poll.versioned and drones.shared_poll.proxy_name == "poll_backend"
    assert result.config.shared_poll.hmac_secret_key == "your-secret-key"
    assert result.config.channel.proxy.shared_poll_refresh.endpoint.endswith("/centrifugo/refresh")


def test_docs_signatures_verify_and_bind_user_channel_and_key_order() -> None:
    config = SharedPollConfig(hmac_secret_key="s3cret")
    sig = docs_signature("s3cret", "alice", "votes:1", ["a", "b"], 60, NOW)
    assert signature.verify(config, "alice", "votes:1", ["a", "b"], sig, NOW) == NOW + 60
    assert signature.sign("s3cret", "alice", "votes:1", ["a", "b"], NOW, NOW + 60) == sig
    for user, channel, keys in (("bob", "votes:1", ["a", "b"]), ("alice", "votes:2", ["a", "b"]),
                                ("alice", "votes:1", ["b", "a"]), ("alice", "votes:1", ["a"])):
        with pytest.raises(signature.SignatureInvalid):
            signature.verify(config, user, channel, keys, sig, NOW)
    # NUL separators: moving a colon between user and channel does not keep a signature valid.
    colon = docs_signature("s3cret", "alice:news", "tech", ["a"], 60, NOW)
    with pytest.raises(signature.SignatureInvalid):
        signature.verify(config, "alice", "news:tech", ["a"], colon, NOW)
    for bad in ("", "1:2", "x:y:z", sig + "0"):
        with pytest.raises(signature.SignatureInvalid):
            signature.verify(config, "alice", "votes:1", ["a", "b"], bad, NOW)


def test_expiry_has_a_five_second_grace_and_zero_never_expires() -> None:
    config = SharedPollConfig(hmac_secret_key="k")
    sig = docs_signature("k", "", "c", ["a"], 10, NOW)
    assert signature.verify(config, "", "c", ["a"], sig, NOW + 15) == NOW + 10
    with pytest.raises(signature.SignatureExpired):
        signature.verify(config, "", "c", ["a"], sig, NOW + 16)
    forever = signature.sign("k", "", "c", ["a"], NOW, 0)
    assert signature.verify(config, "", "c", ["a"], forever, NOW + 10**6) == 0


def test_previous_key_is_accepted_until_valid_until() -> None:
    old = docs_signature("old", "u", "c", ["a"], 60, NOW)
    rotating = SharedPollConfig(hmac_secret_key="new", hmac_previous_secret_key="old")
    assert signature.verify(rotating, "u", "c", ["a"], old, NOW) == NOW + 60
    bounded = SharedPollConfig(hmac_secret_key="new", hmac_previous_secret_key="old",
                               hmac_previous_secret_key_valid_until=NOW - 1)
    with pytest.raises(signature.SignatureInvalid):
        signature.verify(bounded, "u", "c", ["a"], old, NOW)
    with pytest.raises(signature.SignatureInvalid):
        signature.verify(SharedPollConfig(hmac_secret_key="new"), "u", "c", ["a"], old, NOW)


@pytest.mark.parametrize("bad", [{"mode": "sometimes"}, {"publish_enabled": True}, {"refresh_interval": 0.0},
                                 {"refresh_batch_size": 0},
                                 {"max_keys_per_connection": -1}, {"channel_shutdown_delay": -1.0}])
def test_bad_namespace_options_are_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="shared_poll"):
        SharedPollOptions(**bad).validate("channel.namespaces[votes]")  # type: ignore[arg-type]


def test_a_shared_poll_namespace_needs_the_hmac_secret_key(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    ns = {"name": "votes", "subscription_type": "shared_poll"}
    proxy = {"shared_poll_refresh": {"endpoint": "http://127.0.0.1:1/refresh"}}
    path.write_text(json.dumps({"channel": {"proxy": proxy, "namespaces": [ns]}}))
    with pytest.raises(ConfigError, match="hmac_secret_key is required"):
        load(str(path), {}, {})
    path.write_text(json.dumps({"shared_poll": {"hmac_secret_key": "k"},
                                "channel": {"proxy": proxy, "namespaces": [ns]}}))
    assert load(str(path), {}, {}).config.channel.namespaces[0].shared_poll.mode == "versionless"


def test_a_protobuf_track_or_untrack_decodes_to_the_json_decoders_lists() -> None:
    cmd = pb.Command(id=7)
    cmd.sub_refresh.channel, cmd.sub_refresh.type = "votes:1", 2
    cmd.sub_refresh.untrack.extend(["a", "b"])
    batch = cmd.sub_refresh.track.add(signature="s")
    batch.items.add(key="c", version=3)
    body = cmd.SerializeToString()
    (decoded,) = proto.decode_frame(proto.varint(len(body)) + body)
    assert decoded.params == {"channel": "votes:1", "type": 2, "untrack": ["a", "b"],
                              "track": [{"signature": "s", "items": [{"key": "c", "version": 3}]}]}
    assert type(decoded.params["untrack"]) is list


def test_removal_and_publication_are_centrifuges_publication_fields() -> None:
    # centrifugal/protocol v0.21.1 (client.pb_easyjson.go): zero fields left out, data key epoch version order.
    assert wire.removal("json", "k") == b'{"key":"k","removed":true}'
    assert wire.publication("json", "k", 3, b'{"a":1}') == b'{"data":{"a":1},"key":"k","version":3}'
    assert wire.publication("json", "k", 3, b"1", "e") == b'{"data":1,"key":"k","epoch":"e","version":3}'
    assert wire.removal("protobuf", "k") == b"\x5a\x01k\x60\x01"  # key = 11, removed = 12
    assert pb.Publication.FromString(wire.publication("protobuf", "k", 3, b"1", "e")) == \
        pb.Publication(data=b"1", key="k", epoch="e", version=3)


def test_a_delta_subscribers_publications_and_the_negotiated_subscribe_result() -> None:
    # client_keyed.go keyedWritePublication: on a JSON delta subscription the data is a JSON string (full) or a
    # fossil patch as a JSON string with delta set; protobuf carries the bytes as they are.
    assert wire.publication("json", "k", 3, b'{"a":1}', as_string=True) == \
        b'{"data":"{\\"a\\":1}","key":"k","version":3}'
    assert wire.publication("json", "k", 4, b"7\n3@0,4:1}];", patch=True) == \
        b'{"data":"7\\n3@0,4:1}];","delta":true,"key":"k","version":4}'
    assert pb.Publication.FromString(wire.publication("protobuf", "k", 4, b"p", patch=True)) == \
        pb.Publication(data=b"p", delta=True, key="k", version=4)
    assert json.loads(wire.subscribe_result("json", "e", None, delta=True)) == {"type": 4, "epoch": "e", "delta": True}
    assert "delta" not in json.loads(wire.subscribe_result("json", "e", None))
    assert pb.SubscribeResult.FromString(wire.subscribe_result("protobuf", "e", None, delta=True)).delta


def test_a_refresh_answer_item_keeps_prev_data_as_raw_json() -> None:
    item = _json_item({"key": "k", "data": {"v": 2}, "version": 2, "prev_data": {"v": 1}})
    assert (item.data, item.prev_data) == (b'{"v":2}', b'{"v":1}')
    assert _json_item({"key": "k", "data": {"v": 2}, "version": 2}).prev_data is None
