"""The client TLS context of an engine connection (Redis, NATS), from the ``tls`` section they share."""

from __future__ import annotations

import ssl

from node.config_engine import RedisTlsConfig


def client_context(tls: RedisTlsConfig, *, required: bool = False) -> ssl.SSLContext | None:
    """A context trusting ``server_ca_pem`` (the system's CAs when empty), or None when TLS is off (``required``:
    on anyway, e.g. for a ``rediss://`` address)."""
    if not (required or tls.enabled):
        return None
    ctx = ssl.create_default_context(cadata=tls.server_ca_pem or None)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
