"""Fossil delta encoding (the format of fossil-scm's ``delta.c``, which the Centrifugo SDKs decode).

A delta is ``<target length>\\n`` followed by commands ``<n>@<offset>,`` (copy n bytes of the source from
offset) and ``<n>:<bytes>`` (insert n literal bytes), closed by ``<checksum>;``. Integers use fossil's base-64
digits. The encoder indexes the source in fixed blocks and greedily extends every block match found in the
target; it keeps copy boundaries on UTF-8 character boundaries, because JSON subscribers receive the delta as
a JSON string and a literal that split a character would not survive that round trip.
"""

from __future__ import annotations

from typing import Final

_DIGITS: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
BLOCK: Final = 16  # bytes per indexed source block; matches shorter than this are not looked for
MIN_COPY: Final = 8  # a copy command costs a few bytes: shorter matches are cheaper as literals


def _int(value: int) -> bytes:
    if value == 0:
        return b"0"
    out = bytearray()
    while value:
        out.append(_DIGITS[value & 63])
        value >>= 6
    out.reverse()
    return bytes(out)


def checksum(data: bytes) -> int:
    """fossil's 32-bit checksum: four byte lanes summed, folded big-endian, plus the unaligned tail."""
    n4 = len(data) - len(data) % 4
    s0, s1, s2, s3 = (sum(data[i:n4:4]) for i in range(4))
    total = s3 + (s2 << 8) + (s1 << 16) + (s0 << 24)
    for shift, byte in zip((24, 16, 8), data[n4:], strict=False):
        total += byte << shift
    return total & 0xFFFFFFFF


def _boundary(data: bytes, i: int) -> bool:
    """True when a UTF-8 character starts at ``i`` (or ``i`` is the end)."""
    return i >= len(data) or data[i] & 0xC0 != 0x80


def create(source: bytes, target: bytes) -> bytes:
    """A delta that turns ``source`` into ``target``."""
    out = [_int(len(target)), b"\n"]
    index: dict[bytes, int] = {}
    if len(source) >= BLOCK:
        for off in range(len(source) - BLOCK, -1, -BLOCK):  # backwards: the first occurrence wins
            index[source[off:off + BLOCK]] = off
    literal_start = 0
    pos = 0
    end = len(target) - BLOCK
    while pos <= end:
        src_off = index.get(target[pos:pos + BLOCK])
        if src_off is None:
            pos += 1
            continue
        # Extend the match forwards, then backwards into the pending literal.
        length = BLOCK
        limit = min(len(source) - src_off, len(target) - pos)
        while length < limit and source[src_off + length] == target[pos + length]:
            length += 1
        back = 0
        while back < pos - literal_start and back < src_off and source[src_off - back - 1] == target[pos - back - 1]:
            back += 1
        start, src_start, stop = pos - back, src_off - back, pos + length
        while start < stop and not _boundary(target, start):
            start += 1
            src_start += 1
        while stop > start and not _boundary(target, stop):
            stop -= 1
        if stop - start < MIN_COPY:
            pos += 1
            continue
        if start > literal_start:
            out += (_int(start - literal_start), b":", target[literal_start:start])
        out += (_int(stop - start), b"@", _int(src_start), b",")
        literal_start = pos = stop
    if literal_start < len(target):
        out += (_int(len(target) - literal_start), b":", target[literal_start:])
    out += (_int(checksum(target)), b";")
    return b"".join(out)
