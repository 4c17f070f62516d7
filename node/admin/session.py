"""Admin sessions: tokens signed with ``admin.secret`` that expire, and a limit on failed logins per address.

A token is an HS256 JWT with its own audience, so it is never mistaken for a client connection token even when
an operator reuses a secret; it authorises the admin endpoints only (the server API keeps its own key)."""

from __future__ import annotations

import hmac
import time
from collections import deque
from typing import Final

import jwt

AUDIENCE: Final = "fugato-admin"
SESSION_TTL: Final = 24 * 3600.0  # seconds a login lasts (Centrifugo's tokens last 30 days: a shorter session)

# Failed logins allowed per client address within the window; more are answered 429 without checking the
# password, so guessing runs at most this fast from one address.
MAX_FAILURES: Final = 5
FAILURE_WINDOW: Final = 60.0
# Bounds the memory an attacker with many addresses can make the limiter use: the oldest address is forgotten.
MAX_TRACKED: Final = 10_000


def issue_token(secret: str, now: float | None = None, ttl: float = SESSION_TTL) -> str:
    issued = int(time.time() if now is None else now)
    return jwt.encode({"sub": "admin", "aud": AUDIENCE, "iat": issued, "exp": issued + int(ttl)}, secret,
                      algorithm="HS256")


def token_valid(secret: str, token: str) -> bool:
    """Whether ``token`` was issued with ``secret`` and has not expired."""
    if not secret or not token:
        return False
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], audience=AUDIENCE,
                            options={"require": ["exp", "aud"]})
    except jwt.InvalidTokenError:
        return False
    return claims.get("sub") == "admin"


def password_matches(given: str, password: str) -> bool:
    return bool(password) and hmac.compare_digest(given.encode(), password.encode())


class LoginLimiter:
    """Failed login attempts per client address in a sliding window."""

    __slots__ = ("_failures", "max_failures", "window")

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        times = self._failures.get(address)
        if times is None:
            return 0.0
        now = time.monotonic() if now is None else now
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return 0.0
        if len(times) < self.max_failures:
            return 0.0
        return times[0] + self.window - now

    def failed(self, address: str, now: float | None = None) -> None:
        times = self._failures.get(address)
        if times is None:
            if len(self._failures) >= MAX_TRACKED:
                del self._failures[next(iter(self._failures))]
            times = self._failures[address] = deque(maxlen=self.max_failures)
        times.append(time.monotonic() if now is None else now)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
