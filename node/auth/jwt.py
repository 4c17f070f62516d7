"""Verification of connection and subscription JWTs with Centrifugo's rules.

The compact token is split and decoded here; PyJWT's algorithm objects (backed by ``cryptography``) check the
signature. Keys come from one ``TokenConfig``: HMAC secrets (with an optional previous secret for rotation),
an RSA or ECDSA public key in PEM, or, exclusively, a JWKS endpoint fetched over HTTP and cached by ``kid``.
Everything except the JWKS fetch is synchronous CPU work. Every rejection is a ``TokenError``;
``TokenExpiredError`` means only that ``exp`` has passed (the node answers it with error 109).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import Algorithm, ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms
from jwt.exceptions import PyJWTError

from node.config import TokenConfig
from node.errors import ConfigError, TokenError, TokenExpiredError

# Looked up at call time, so tests may shorten them.
JWKS_CACHE_TTL: float = 3600.0  # seconds a fetched key set is trusted
JWKS_REFETCH_INTERVAL: float = 5.0  # at most one fetch per endpoint in this many seconds
JWKS_MAX_ENDPOINTS: Final = 1024  # distinct templated endpoint URLs kept in the cache

_ALGORITHMS: Final[dict[str, Algorithm]] = get_default_algorithms()
_HMAC_ALGS: Final = frozenset({"HS256", "HS384", "HS512"})
_RSA_ALGS: Final = frozenset({"RS256", "RS384", "RS512"})
_EC_ALG_BY_CURVE: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_EDDSA_ALGS: Final = frozenset({"EdDSA"})
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_URL_VAR_RE: Final = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_OVERRIDE_FIELDS: Final = ("presence", "join_leave", "force_push_join_leave", "force_positioning", "force_recovery")


@dataclass(frozen=True, slots=True)
class SubscribeOverride:
    """Channel options a token overrides for one subscription; ``None`` leaves the namespace's value."""

    presence: bool | None = None
    join_leave: bool | None = None
    force_push_join_leave: bool | None = None
    force_positioning: bool | None = None
    force_recovery: bool | None = None


@dataclass(frozen=True, slots=True)
class ServerSubClaims:
    """One value of a connection token's ``subs`` map (a server-side subscription)."""

    info: bytes | None = None
    data: bytes | None = None
    override: SubscribeOverride | None = None


@dataclass(frozen=True, slots=True)
class ConnectToken:
    user: str
    expire_at: int  # unix seconds, 0 = never expires
    info: bytes | None
    channels: tuple[str, ...]
    subs: Mapping[str, ServerSubClaims]
    meta: bytes | None


@dataclass(frozen=True, slots=True)
class SubscribeToken:
    user: str
    channel: str
    client: str
    expire_at: int  # unix seconds, 0 = never expires
    info: bytes | None
    data: bytes | None
    override: SubscribeOverride | None


@dataclass(frozen=True, slots=True)
class _VerifyKey:
    key: Any  # a cryptography public key object
    algorithms: frozenset[str]


@dataclass(slots=True)
class _KeySet:
    """The cached keys of one JWKS endpoint URL."""

    keys: dict[str, _VerifyKey] = field(default_factory=dict)
    fetched_at: float = -math.inf  # monotonic time of the last successful fetch
    attempted_at: float = -math.inf  # monotonic time of the last fetch attempt
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


# ---------------------------------------------------------------------------------------------------------------
# Decoding helpers (all raise TokenError)


def _b64url(part: str) -> bytes:
    if not _B64URL_RE.fullmatch(part) or len(part) % 4 == 1:
        raise TokenError("malformed token: bad base64")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise TokenError(f"malformed token: {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"malformed token: {what} is not a JSON object")
    return value


def _raw_json(value: Any) -> bytes | None:
    if value is None:
        return None
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, RecursionError):
        raise TokenError("invalid JSON value in claims") from None


def _json_or_b64(claims: Mapping[str, Any], plain: str, b64: str) -> bytes | None:
    """``plain`` (any JSON) as raw bytes, else ``b64`` (standard base64 string) decoded; plain wins."""
    value = claims.get(plain)
    if value is not None:
        return _raw_json(value)
    encoded = claims.get(b64)
    if encoded is None or encoded == "":
        return None
    if not isinstance(encoded, str):
        raise TokenError(f"{b64} claim must be a string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise TokenError(f"{b64} claim is not valid base64") from None


def _str_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TokenError(f"{name} claim must be a string")
    return value


def _numeric_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenError(f"{name} claim must be a number")
    return float(value)


def _override(value: Any) -> SubscribeOverride | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TokenError("override claim must be an object")
    flags: dict[str, bool | None] = {}
    for name in _OVERRIDE_FIELDS:
        item = value.get(name)
        if item is None:
            flags[name] = None
            continue
        if not isinstance(item, dict):
            raise TokenError(f"override.{name} must be an object like {{\"value\": true}}")
        flag = item.get("value", False)
        if not isinstance(flag, bool):
            raise TokenError(f"override.{name}.value must be a boolean")
        flags[name] = flag
    return SubscribeOverride(**flags)


def _expire_at(claims: Mapping[str, Any], exp: float | None) -> int:
    """The ``expire_at`` claim when present (0 or less = never), else ``exp``, else 0."""
    value = claims.get("expire_at")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TokenError("expire_at claim must be a number")
        return max(int(value), 0)
    return int(exp) if exp is not None else 0


def _contains_str(value: Any, what: str) -> list[str]:
    """A string or list of strings claim (``aud``) as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise TokenError(f"{what} claim must be a string or a list of strings")


# ---------------------------------------------------------------------------------------------------------------
# Key loading


def _load_pem(pem: str, expected: type[Any], where: str) -> Any:
    data = pem.strip().encode()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: cannot parse PEM public key: {e}") from e
    if not isinstance(key, expected):
        raise ConfigError(f"{where}: PEM holds a {type(key).__name__}, expected {expected.__name__}")
    return key


def _ec_algorithms(key: EllipticCurvePublicKey) -> frozenset[str]:
    alg = _EC_ALG_BY_CURVE.get(key.curve.name)
    return frozenset({alg}) if alg else frozenset()


def _jwk_to_key(jwk: Mapping[str, Any]) -> _VerifyKey | None:
    """One JWK as a verification key, or None when it is unusable for JWS verification."""
    use = jwk.get("use")
    if use is not None and use != "sig":
        return None
    kty = jwk.get("kty")
    algs: frozenset[str]
    try:
        if kty == "RSA":
            key: Any = RSAAlgorithm.from_jwk(dict(jwk))
            if isinstance(key, RSAPrivateKey):
                key = key.public_key()
            algs = _RSA_ALGS
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(dict(jwk))
            if isinstance(key, EllipticCurvePrivateKey):
                key = key.public_key()
            algs = _ec_algorithms(key)
        elif kty == "OKP" and jwk.get("crv") == "Ed25519":
            key = OKPAlgorithm.from_jwk(dict(jwk))
            if isinstance(key, Ed25519PrivateKey):
                key = key.public_key()
            if not isinstance(key, Ed25519PublicKey):
                return None
            algs = _EDDSA_ALGS
        else:
            return None
    except (PyJWTError, ValueError, TypeError, KeyError):
        return None
    declared = jwk.get("alg")
    if isinstance(declared, str) and declared:
        algs = algs & {declared}
    return _VerifyKey(key, algs) if algs else None


def _parse_jwks(body: bytes) -> dict[str, _VerifyKey]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise TokenError("JWKS endpoint returned invalid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise TokenError("JWKS endpoint returned no \"keys\" list")
    keys: dict[str, _VerifyKey] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid", "")
        if not isinstance(kid, str):
            continue
        key = _jwk_to_key(jwk)
        if key is not None:
            keys.setdefault(kid, key)
    return keys


# ---------------------------------------------------------------------------------------------------------------
# Verification


class _Profile:
    """The verification rules of one TokenConfig (connection or subscription tokens)."""

    def __init__(self, cfg: TokenConfig, where: str) -> None:
        self.hmac_secret = cfg.hmac_secret_key.encode()
        self.hmac_previous = cfg.hmac_previous_secret_key.encode()
        self.hmac_previous_until = cfg.hmac_previous_secret_key_valid_until
        self.rsa_key: RSAPublicKey | None = None
        self.ec_key: EllipticCurvePublicKey | None = None
        if cfg.rsa_public_key:
            self.rsa_key = _load_pem(cfg.rsa_public_key, RSAPublicKey, f"{where}.rsa_public_key")
        if cfg.ecdsa_public_key:
            self.ec_key = _load_pem(cfg.ecdsa_public_key, EllipticCurvePublicKey, f"{where}.ecdsa_public_key")
        self.jwks_url = cfg.jwks_public_endpoint
        self.audience = cfg.audience
        self.audience_re = re.compile(cfg.audience_regex) if cfg.audience_regex else None
        self.issuer = cfg.issuer
        self.issuer_re = re.compile(cfg.issuer_regex) if cfg.issuer_regex else None
        self.user_path = tuple(cfg.user_id_claim.split(".")) if cfg.user_id_claim else ()
        self.key_sets: dict[str, _KeySet] = {}
        self.has_static_key = bool(self.hmac_secret or self.hmac_previous or self.rsa_key or self.ec_key)

    def check_audience_issuer(self, claims: Mapping[str, Any]) -> dict[str, str]:
        """Check aud/iss; returns named groups of the regex matches (JWKS URL template variables)."""
        variables: dict[str, str] = {}
        if self.audience or self.audience_re:
            auds = _contains_str(claims.get("aud"), "aud")
            if self.audience and self.audience not in auds:
                raise TokenError("invalid audience")
            if self.audience_re is not None:
                for aud in auds:
                    m = self.audience_re.fullmatch(aud)
                    if m:
                        variables.update({k: v for k, v in m.groupdict().items() if v is not None})
                        break
                else:
                    raise TokenError("invalid audience")
        if self.issuer or self.issuer_re:
            iss = _str_claim(claims, "iss")
            if self.issuer and iss != self.issuer:
                raise TokenError("invalid issuer")
            if self.issuer_re is not None:
                m = self.issuer_re.fullmatch(iss)
                if not m:
                    raise TokenError("invalid issuer")
                variables.update({k: v for k, v in m.groupdict().items() if v is not None})
        return variables

    def verify_static(self, alg: str, signing_input: bytes, signature: bytes, now: float) -> None:
        algorithm = _ALGORITHMS[alg]
        if alg in _HMAC_ALGS and (self.hmac_secret or self.hmac_previous):
            if self.hmac_secret and algorithm.verify(signing_input, self.hmac_secret, signature):
                return
            previous_ok = not self.hmac_previous_until or now < self.hmac_previous_until
            if self.hmac_previous and previous_ok and algorithm.verify(signing_input, self.hmac_previous, signature):
                return
            raise TokenError("invalid token signature")
        if alg in _RSA_ALGS and self.rsa_key is not None:
            if algorithm.verify(signing_input, self.rsa_key, signature):
                return
            raise TokenError("invalid token signature")
        if self.ec_key is not None and alg in _ec_algorithms(self.ec_key):
            if algorithm.verify(signing_input, self.ec_key, signature):
                return
            raise TokenError("invalid token signature")
        raise TokenError(f"token algorithm {alg} is not enabled")

    def user(self, claims: Mapping[str, Any]) -> str:
        if not self.user_path:
            return _str_claim(claims, "sub")
        value: Any = claims
        for step in self.user_path:
            if not isinstance(value, dict):
                return ""
            value = value.get(step)
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise TokenError("user id claim must be a string")


class JWTVerifier:
    """Verifies connection and subscription tokens; one instance per node."""

    def __init__(self, token: TokenConfig, subscription_token: TokenConfig, *, skip_signature: bool = False,
                 http_timeout: float = 1.0) -> None:
        self._connect = _Profile(token, "client.token")
        self._subscribe = (_Profile(subscription_token, "client.subscription_token")
                           if subscription_token.enabled else self._connect)
        self._skip_signature = skip_signature
        self._http_timeout = http_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def _needs_http(self) -> bool:
        return not self._skip_signature and bool(self._connect.jwks_url or self._subscribe.jwks_url)

    async def start(self) -> None:
        if self._needs_http and self._session is None:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def verify_connect_token(self, token: str) -> ConnectToken:
        profile = self._connect
        claims, exp = await self._verify(profile, token)
        channel = claims.get("channel")
        if channel is not None and channel != "":
            raise TokenError("connection token must not carry a channel claim")
        channels = claims.get("channels")
        if channels is None:
            channels = []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise TokenError("channels claim must be a list of strings")
        subs_claim = claims.get("subs")
        if subs_claim is None:
            subs_claim = {}
        if not isinstance(subs_claim, dict):
            raise TokenError("subs claim must be an object")
        subs: dict[str, ServerSubClaims] = {}
        for name, value in subs_claim.items():
            sub = {} if value is None else value
            if not isinstance(sub, dict):
                raise TokenError("subs claim values must be objects")
            subs[name] = ServerSubClaims(
                info=_json_or_b64(sub, "info", "b64info"),
                data=_json_or_b64(sub, "data", "b64data"),
                override=_override(sub.get("override")),
            )
        return ConnectToken(
            user=profile.user(claims),
            expire_at=_expire_at(claims, exp),
            info=_json_or_b64(claims, "info", "b64info"),
            channels=tuple(channels),
            subs=MappingProxyType(subs),
            meta=_raw_json(claims.get("meta")),
        )

    async def verify_subscribe_token(self, token: str) -> SubscribeToken:
        profile = self._subscribe
        claims, exp = await self._verify(profile, token)
        channel = _str_claim(claims, "channel")
        if not channel:
            raise TokenError("subscription token has no channel claim")
        return SubscribeToken(
            user=profile.user(claims),
            channel=channel,
            client=_str_claim(claims, "client"),
            expire_at=_expire_at(claims, exp),
            info=_json_or_b64(claims, "info", "b64info"),
            data=_json_or_b64(claims, "data", "b64data"),
            override=_override(claims.get("override")),
        )

    async def _verify(self, profile: _Profile, token: str) -> tuple[dict[str, Any], float | None]:
        """Signature, alg, aud/iss, exp/nbf checks; returns the claims and ``exp``."""
        if not isinstance(token, str):
            raise TokenError("malformed token")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("malformed token: expected three dot-separated parts")
        header = _json_object(_b64url(parts[0]), "header")
        claims = _json_object(_b64url(parts[1]), "payload")
        signature = _b64url(parts[2])
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise TokenError("malformed token: no alg in header")
        if alg.lower() == "none":
            raise TokenError("unsigned tokens (alg none) are not accepted")
        now = time.time()
        variables = profile.check_audience_issuer(claims)
        if not self._skip_signature:
            signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
            if alg not in _ALGORITHMS:
                raise TokenError(f"token algorithm {alg} is not supported")
            try:
                if profile.jwks_url:
                    await self._verify_jwks(profile, header, alg=alg, signing_input=signing_input,
                                            signature=signature, variables=variables)
                elif profile.has_static_key:
                    profile.verify_static(alg, signing_input, signature, now)
                else:
                    raise TokenError("no token verification key configured")
            except (PyJWTError, ValueError, TypeError):
                raise TokenError("invalid token signature") from None
        exp = _numeric_claim(claims, "exp")
        nbf = _numeric_claim(claims, "nbf")
        if exp is not None and now > exp:
            raise TokenExpiredError("token expired")
        if nbf is not None and now < nbf:
            raise TokenError("token not valid yet (nbf)")
        return claims, exp

    async def _verify_jwks(self, profile: _Profile, header: Mapping[str, Any], *, alg: str, signing_input: bytes,
                           signature: bytes, variables: Mapping[str, str]) -> None:
        kid = header.get("kid", "")
        if not isinstance(kid, str):
            raise TokenError("malformed token: kid header must be a string")

        def substitute(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in variables:
                raise TokenError(f"JWKS endpoint variable {name!r} not found in issuer/audience")
            return variables[name]

        url = _URL_VAR_RE.sub(substitute, profile.jwks_url)
        key = await self._jwks_key(profile, url, kid)
        if alg not in key.algorithms:
            raise TokenError(f"token algorithm {alg} does not match key {kid!r}")
        if not _ALGORITHMS[alg].verify(signing_input, key.key, signature):
            raise TokenError("invalid token signature")

    async def _jwks_key(self, profile: _Profile, url: str, kid: str) -> _VerifyKey:
        key_set = profile.key_sets.get(url)
        if key_set is None:
            if len(profile.key_sets) >= JWKS_MAX_ENDPOINTS:
                profile.key_sets.pop(next(iter(profile.key_sets)))
            key_set = profile.key_sets[url] = _KeySet()
        key = key_set.keys.get(kid)
        if key is not None and time.monotonic() - key_set.fetched_at < JWKS_CACHE_TTL:
            return key
        async with key_set.lock:
            now = time.monotonic()
            key = key_set.keys.get(kid)
            fresh = now - key_set.fetched_at < JWKS_CACHE_TTL
            if key is not None and fresh:  # another task fetched it meanwhile
                return key
            if now - key_set.attempted_at >= JWKS_REFETCH_INTERVAL:
                key_set.attempted_at = now
                try:
                    key_set.keys = await self._fetch_jwks(url)
                    key_set.fetched_at = time.monotonic()
                except TokenError:
                    if key is None:
                        raise
                    return key  # endpoint unavailable: keep using the stale key
                key = key_set.keys.get(kid)
        if key is None:
            raise TokenError(f"no JWKS key with kid {kid!r}")
        return key

    async def _fetch_jwks(self, url: str) -> dict[str, _VerifyKey]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=self._http_timeout)
        problem = ""
        for _ in range(2):  # one retry
            try:
                async with self._session.get(url, timeout=timeout) as resp:
                    if resp.status != 200:
                        problem = f"HTTP status {resp.status}"
                        continue
                    body = await resp.read()
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                problem = str(e) or type(e).__name__
                continue
            return _parse_jwks(body)
        raise TokenError(f"cannot fetch JWKS: {problem}")
