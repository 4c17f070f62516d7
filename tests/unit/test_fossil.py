"""The fossil delta encoder, checked with the decoder that ships inside centrifuge-python (a real client)."""

from __future__ import annotations

import json
import random

import pytest
from centrifuge.fossil import apply_delta
from centrifuge.fossil import checksum as sdk_checksum

from node.delta import fossil


def roundtrip(source: bytes, target: bytes) -> bytes:
    delta = fossil.create(source, target)
    assert bytes(apply_delta(source, delta)) == target
    return delta


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 15, 16, 17, 1000])
def test_checksum_matches_the_sdk(size: int) -> None:
    data = bytes(random.Random(size).randrange(256) for _ in range(size))
    assert fossil.checksum(data) == sdk_checksum(list(data))


def test_empty_and_tiny_inputs() -> None:
    roundtrip(b"", b"")
    roundtrip(b"", b"hello")
    roundtrip(b"hello", b"")
    roundtrip(b"abc", b"abd")


def test_a_small_change_in_a_large_document_gives_a_small_delta() -> None:
    doc = {"items": [{"id": i, "name": f"item {i}", "price": i * 1.5} for i in range(200)]}
    source = json.dumps(doc).encode()
    doc["items"][100]["price"] = 99999
    target = json.dumps(doc).encode()
    delta = roundtrip(source, target)
    assert len(delta) < len(target) / 20


def test_utf8_characters_are_never_split_into_literals() -> None:
    source = json.dumps({"text": "héllo wörld ✓ 日本語テキスト " * 20}, ensure_ascii=False).encode()
    target = json.dumps({"text": "héllo wörld ✓ 日本語テキスト " * 19 + "changé ✓"}, ensure_ascii=False).encode()
    delta = roundtrip(source, target)
    delta.decode("utf-8")  # the delta travels as a JSON string: it must be valid UTF-8


def test_random_edits_roundtrip() -> None:
    rng = random.Random(7)
    for _ in range(200):
        source = bytes(rng.choice(b"abcdefgh{}:,\"0123456789") for _ in range(rng.randrange(0, 400)))
        target = bytearray(source)
        for _ in range(rng.randrange(0, 6)):
            at = rng.randrange(0, len(target) + 1)
            if rng.random() < 0.5 and target:
                del target[at:at + rng.randrange(1, 20)]
            else:
                target[at:at] = bytes(rng.choice(b"xyz") for _ in range(rng.randrange(1, 30)))
        roundtrip(source, bytes(target))
