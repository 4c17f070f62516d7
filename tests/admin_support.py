"""Helpers shared by the admin UI tests: the admin config section and an HTTP login."""

from __future__ import annotations

import json
from typing import Any

from harness import ServerProcess

ADMIN_PASSWORD = "admin-test-password"
ADMIN_SECRET = "admin-test-secret-0123456789abcdef0123"


def admin_config(**overrides: Any) -> dict[str, Any]:
    """The config override that switches the admin UI on (Centrifugo's ``admin`` keys)."""
    return {"admin": {"enabled": True, "password": ADMIN_PASSWORD, "secret": ADMIN_SECRET, **overrides}}


async def admin_login(server: ServerProcess, prefix: str = "") -> str:
    status, _, body = await server.http("POST", f"{prefix}/admin/auth", body=f"password={ADMIN_PASSWORD}".encode(),
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    token = json.loads(body)["token"]
    assert isinstance(token, str)
    return token


async def admin_call(server: ServerProcess, token: str, method: str, params: Any = None,
                     prefix: str = "") -> tuple[int, Any]:
    """One server API method through the admin endpoint: (HTTP status, parsed body or None)."""
    status, _, body = await server.http("POST", f"{prefix}/admin/api", json_body={"method": method,
                                        "params": params or {}}, headers={"Authorization": f"token {token}"})
    return status, json.loads(body) if status == 200 else None
