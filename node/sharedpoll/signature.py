"""Track signatures: ``iat:exp:hmac_hex``, HMAC-SHA256 over ``iat NUL exp NUL user NUL channel NUL
sha256_hex(keys joined by NUL)`` in the order the keys were sent (Centrifugo's shared poll authorization)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

from node.sharedpoll.options import TrackSigningKeys

# A signature whose exp is this many seconds past still verifies (clock skew, requests in flight).
GRACE_SECONDS: Final = 5


class SignatureInvalid(Exception):
    """Not signed by a configured key (error 103)."""


class SignatureExpired(Exception):
    """Signed, but expired beyond the grace period (error 109: the SDK asks its backend for a new one)."""


def timestamps(signature: str) -> tuple[int, int]:
    """(iat, exp) of a signature; (0, 0) when it is malformed."""
    parts = signature.split(":", 2)
    if len(parts) != 3:
        return 0, 0
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return 0, 0


def _mac(secret: str, iat: str, exp: str, user: str, channel: str, keys: Sequence[str]) -> str:
    keys_hash = hashlib.sha256("\x00".join(keys).encode()).hexdigest()
    payload = "\x00".join((iat, exp, user, channel, keys_hash)).encode()
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def sign(secret: str, user: str, channel: str, keys: Sequence[str], iat: int, exp: int) -> str:
    """What the application's backend computes (used by the tests and the benchmark)."""
    return f"{iat}:{exp}:{_mac(secret, str(iat), str(exp), user, channel, keys)}"


def verify(config: TrackSigningKeys, user: str, channel: str, keys: Sequence[str], signature: str,
           now: float) -> int:
    """The signature's exp (0: never expires), or SignatureInvalid / SignatureExpired raised."""
    parts = signature.split(":", 2)
    if len(parts) != 3 or not config.hmac_secret_key:
        raise SignatureInvalid
    iat_s, exp_s, given = parts
    ok = hmac.compare_digest(given, _mac(config.hmac_secret_key, iat_s, exp_s, user, channel, keys))
    if not ok and config.hmac_previous_secret_key:
        iat, _ = timestamps(signature)
        valid_until = config.hmac_previous_secret_key_valid_until
        if not valid_until or iat <= valid_until:
            ok = hmac.compare_digest(given, _mac(config.hmac_previous_secret_key, iat_s, exp_s, user, channel,
                                                 keys))
    if not ok:
        raise SignatureInvalid
    _, exp = timestamps(signature)
    if exp and exp + GRACE_SECONDS < now:
        raise SignatureExpired
    return exp
