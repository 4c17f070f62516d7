"""Admin session tokens and the failed-login limiter (node/admin/session.py), and the live tail's bound."""

from __future__ import annotations

import time

import jwt

from node.admin.session import LoginLimiter, issue_token, password_matches, token_valid
from node.admin.tail import MAX_PENDING, Tail
from node.models import Publication, StreamPosition

SECRET = "admin-secret-0123456789abcdef0123456789"


def test_token_round_trip_and_expiry() -> None:
    token = issue_token(SECRET)
    assert token_valid(SECRET, token)
    assert not token_valid("another-secret-0123456789abcdef012345", token)
    assert not token_valid("", token)
    assert not token_valid(SECRET, "")
    expired = issue_token(SECRET, now=time.time() - 7200, ttl=3600)
    assert not token_valid(SECRET, expired)


def test_only_admin_tokens_pass() -> None:
    # A client connection token made with the same secret (no admin audience) opens nothing.
    connection = jwt.encode({"sub": "admin", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert not token_valid(SECRET, connection)
    # Nor does an unsigned token with the right claims.
    unsigned = jwt.encode({"sub": "admin", "aud": "fugato-admin", "exp": int(time.time()) + 60}, None,
                          algorithm="none")
    assert not token_valid(SECRET, unsigned)
    assert not token_valid(SECRET, issue_token(SECRET)[:-2] + "xx")


def test_password_matches() -> None:
    assert password_matches("pw", "pw")
    assert not password_matches("pw ", "pw")
    assert not password_matches("", "")  # no password configured: nobody logs in


def test_limiter_blocks_after_failures_and_forgets_after_window() -> None:
    limiter = LoginLimiter(max_failures=3, window=60.0)
    for i in range(3):
        assert limiter.retry_after("1.2.3.4", now=100.0 + i) == 0
        limiter.failed("1.2.3.4", now=100.0 + i)
    assert limiter.retry_after("1.2.3.4", now=103.0) == 57.0  # until the first failure leaves the window
    assert limiter.retry_after("5.6.7.8", now=103.0) == 0  # per address
    assert limiter.retry_after("1.2.3.4", now=160.5) == 0
    limiter.failed("1.2.3.4", now=161.0)
    limiter.succeeded("1.2.3.4")
    assert limiter.retry_after("1.2.3.4", now=161.0) == 0


def test_a_tail_that_falls_behind_overflows_instead_of_buffering() -> None:
    tail = Tail()
    for offset in range(1, MAX_PENDING + 10):
        tail("ch", Publication(data=b"{}", offset=offset), StreamPosition(offset, "e"))
    assert len(tail.pending) == MAX_PENDING and tail.overflowed and tail.wake.is_set()
    assert [pub.offset for pub, _ in list(tail.pending)[:2]] == [1, 2]  # the oldest are kept, in order
