"""Tests of node.auth.jwt: Centrifugo's connection and subscription JWT rules."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from node.auth import jwt as jwtmod
from node.auth.jwt import ConnectToken, JWTVerifier, ServerSubClaims, SubscribeOverride, SubscribeToken
from node.config import TokenConfig
from node.errors import ConfigError, TokenError, TokenExpiredError

ALGS = get_default_algorithms()
SECRET = "secret"  # short on purpose: Centrifugo accepts any secret length
NO_SUB = TokenConfig()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **header: Any) -> str:
    head = {"typ": "JWT", "alg": alg, **header}
    signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
    if alg == "none":
        return signing_input + "."
    k = key.encode() if isinstance(key, str) else key
    return f"{signing_input}.{b64url(ALGS[alg].sign(signing_input.encode(), k))}"


def pem(public_key: Any) -> str:
    data: bytes = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data.decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def hmac_verifier(**kw: Any) -> JWTVerifier:
    return JWTVerifier(TokenConfig(hmac_secret_key=SECRET, **kw), NO_SUB)


# --------------------------------------------------------------------------------------------------------------
# Algorithms and keys


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_algorithms(alg: str) -> None:
    tok = await hmac_verifier().verify_connect_token(make_token({"sub": "u1"}, alg=alg))
    assert tok == ConnectToken(user="u1", expire_at=0, info=None, channels=(), subs={}, meta=None)


async def test_wrong_secret() -> None:
    with pytest.raises(TokenError) as ei:
        await hmac_verifier().verify_connect_token(make_token({"sub": "u1"}, key="other"))
    assert not isinstance(ei.value, TokenExpiredError)


async def test_tampered_payload() -> None:
    good = make_token({"sub": "u1"})
    h, _, s = good.split(".")
    forged = f"{h}.{b64url(json.dumps({'sub': 'admin'}).encode())}.{s}"
    with pytest.raises(TokenError):
        await hmac_verifier().verify_connect_token(forged)


async def test_previous_secret_rotation() -> None:
    now = int(time.time())
    old = make_token({"sub": "u1"}, key="old-secret")
    v = hmac_verifier(hmac_previous_secret_key="old-secret")
    assert (await v.verify_connect_token(old)).user == "u1"
    assert (await v.verify_connect_token(make_token({"sub": "u2"}))).user == "u2"
    v = hmac_verifier(hmac_previous_secret_key="old-secret", hmac_previous_secret_key_valid_until=now + 100)
    assert (await v.verify_connect_token(old)).user == "u1"
    v = hmac_verifier(hmac_previous_secret_key="old-secret", hmac_previous_secret_key_valid_until=now - 1)
    with pytest.raises(TokenError):
        await v.verify_connect_token(old)
    assert (await v.verify_connect_token(make_token({"sub": "u2"}))).user == "u2"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
async def test_rsa_pem(rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, alg: str) -> None:
    v = JWTVerifier(TokenConfig(rsa_public_key=pem(rsa_key.public_key())), NO_SUB)
    assert (await v.verify_connect_token(make_token({"sub": "r"}, rsa_key, alg))).user == "r"
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"sub": "r"}, rsa_key2, alg))


async def test_ecdsa_pem(ec_key: ec.EllipticCurvePrivateKey) -> None:
    v = JWTVerifier(TokenConfig(ecdsa_public_key=pem(ec_key.public_key())), NO_SUB)
    assert (await v.verify_connect_token(make_token({"sub": "e"}, ec_key, "ES256"))).user == "e"
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"sub": "e"}, other, "ES256"))
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(TokenError, match="not enabled"):
        await v.verify_connect_token(make_token({"sub": "e"}, p384, "ES384"))


async def test_ecdsa_p384_pem() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    v = JWTVerifier(TokenConfig(ecdsa_public_key=pem(key.public_key())), NO_SUB)
    assert (await v.verify_connect_token(make_token({"sub": "e"}, key, "ES384"))).user == "e"


async def test_all_static_methods_together(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    v = JWTVerifier(TokenConfig(hmac_secret_key=SECRET, rsa_public_key=pem(rsa_key.public_key()),
                                ecdsa_public_key=pem(ec_key.public_key())), NO_SUB)
    for tok in (make_token({"sub": "a"}), make_token({"sub": "a"}, rsa_key, "RS256"),
                make_token({"sub": "a"}, ec_key, "ES256")):
        assert (await v.verify_connect_token(tok)).user == "a"


async def test_alg_mismatch(rsa_key: rsa.RSAPrivateKey) -> None:
    public_pem = pem(rsa_key.public_key())
    v = JWTVerifier(TokenConfig(rsa_public_key=public_pem), NO_SUB)
    with pytest.raises(TokenError, match="not enabled"):
        await v.verify_connect_token(make_token({"sub": "x"}))
    # Classic key confusion: HMAC "signed" with the public RSA PEM as secret.
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"sub": "x"}, key=public_pem.encode()))
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"sub": "x"}, rsa_key, "PS256"))
    with pytest.raises(TokenError):
        await hmac_verifier().verify_connect_token(make_token({"sub": "x"}, rsa_key, "RS256"))


@pytest.mark.parametrize("skip", [False, True])
async def test_alg_none_rejected(skip: bool) -> None:
    v = JWTVerifier(TokenConfig(hmac_secret_key=SECRET), NO_SUB, skip_signature=skip)
    for alg in ("none", "None", "NONE"):
        with pytest.raises(TokenError):
            await v.verify_connect_token(make_token({"sub": "x"}, alg="none").replace(
                b64url(json.dumps({"typ": "JWT", "alg": "none"}).encode()),
                b64url(json.dumps({"typ": "JWT", "alg": alg}).encode())))


async def test_no_key_configured() -> None:
    v = JWTVerifier(TokenConfig(), NO_SUB)
    with pytest.raises(TokenError, match="no token verification key configured"):
        await v.verify_connect_token(make_token({"sub": "x"}))


def test_bad_pem(ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigError, match=r"client\.token\.rsa_public_key"):
        JWTVerifier(TokenConfig(rsa_public_key="not a pem"), NO_SUB)
    with pytest.raises(ConfigError, match="rsa_public_key"):
        JWTVerifier(TokenConfig(rsa_public_key=pem(ec_key.public_key())), NO_SUB)
    with pytest.raises(ConfigError, match="ecdsa_public_key"):
        JWTVerifier(TokenConfig(ecdsa_public_key=pem(rsa_key.public_key())), NO_SUB)
    with pytest.raises(ConfigError, match=r"client\.subscription_token\.ecdsa_public_key"):
        JWTVerifier(TokenConfig(), TokenConfig(enabled=True, ecdsa_public_key="-----BEGIN PUBLIC KEY-----\nxx"))


# --------------------------------------------------------------------------------------------------------------
# Time claims


async def test_expired() -> None:
    with pytest.raises(TokenExpiredError):
        await hmac_verifier().verify_connect_token(make_token({"sub": "u", "exp": int(time.time()) - 5}))


async def test_expired_with_bad_signature_is_invalid_not_expired() -> None:
    tok = make_token({"sub": "u", "exp": int(time.time()) - 5}, key="wrong")
    with pytest.raises(TokenError) as ei:
        await hmac_verifier().verify_connect_token(tok)
    assert not isinstance(ei.value, TokenExpiredError)


async def test_nbf_in_future_is_invalid() -> None:
    tok = make_token({"sub": "u", "nbf": int(time.time()) + 60})
    with pytest.raises(TokenError) as ei:
        await hmac_verifier().verify_connect_token(tok)
    assert not isinstance(ei.value, TokenExpiredError)
    ok = make_token({"sub": "u", "nbf": int(time.time()) - 1})
    assert (await hmac_verifier().verify_connect_token(ok)).user == "u"


async def test_expiry_and_expire_at() -> None:
    now = int(time.time())
    v = hmac_verifier()
    assert (await v.verify_connect_token(make_token({"exp": now + 100}))).expire_at == now + 100
    assert (await v.verify_connect_token(make_token({"exp": now + 100, "expire_at": now + 50}))).expire_at == now + 50
    assert (await v.verify_connect_token(make_token({"exp": now + 100, "expire_at": 0}))).expire_at == 0
    assert (await v.verify_connect_token(make_token({"expire_at": now + 7}))).expire_at == now + 7
    assert (await v.verify_connect_token(make_token({}))).expire_at == 0
    # expire_at does not disable the exp check
    with pytest.raises(TokenExpiredError):
        await v.verify_connect_token(make_token({"exp": now - 10, "expire_at": 0}))
    sub = await v.verify_subscribe_token(make_token({"channel": "c", "exp": now + 30, "expire_at": now + 20}))
    assert sub.expire_at == now + 20


# --------------------------------------------------------------------------------------------------------------
# Audience and issuer


async def test_audience() -> None:
    v = hmac_verifier(audience="app")
    assert (await v.verify_connect_token(make_token({"sub": "u", "aud": "app"}))).user == "u"
    assert (await v.verify_connect_token(make_token({"sub": "u", "aud": ["x", "app"]}))).user == "u"
    for claims in ({"aud": "other"}, {"aud": ["x"]}, {}, {"aud": 5}):
        with pytest.raises(TokenError):
            await v.verify_connect_token(make_token(claims))


async def test_audience_regex() -> None:
    v = hmac_verifier(audience_regex=r"app-\d+")
    assert (await v.verify_connect_token(make_token({"sub": "u", "aud": ["zz", "app-12"]}))).user == "u"
    for claims in ({"aud": "app-12x"}, {"aud": "xapp-1"}, {}):
        with pytest.raises(TokenError):
            await v.verify_connect_token(make_token(claims))


async def test_issuer() -> None:
    v = hmac_verifier(issuer="me")
    assert (await v.verify_connect_token(make_token({"sub": "u", "iss": "me"}))).user == "u"
    for claims in ({"iss": "you"}, {}, {"iss": ["me"]}):
        with pytest.raises(TokenError):
            await v.verify_connect_token(make_token(claims))
    v = hmac_verifier(issuer_regex=r"https://(\w+)\.example\.com")
    assert (await v.verify_connect_token(make_token({"sub": "u", "iss": "https://t1.example.com"}))).user == "u"
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"iss": "https://t1.example.com/x"}))


async def test_aud_iss_not_checked_when_not_configured() -> None:
    tok = make_token({"sub": "u", "aud": "whatever", "iss": "anyone"})
    assert (await hmac_verifier().verify_connect_token(tok)).user == "u"


# --------------------------------------------------------------------------------------------------------------
# Claims


async def test_user_id_claim() -> None:
    v = hmac_verifier(user_id_claim="user.id")
    assert (await v.verify_connect_token(make_token({"sub": "no", "user": {"id": "42"}}))).user == "42"
    assert (await v.verify_connect_token(make_token({"user": {"id": 7}}))).user == "7"
    assert (await v.verify_connect_token(make_token({"sub": "no"}))).user == ""
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"user": {"id": ["x"]}}))
    v = hmac_verifier(user_id_claim="uid")
    assert (await v.verify_connect_token(make_token({"uid": "abc"}))).user == "abc"


async def test_anonymous_and_bad_sub() -> None:
    assert (await hmac_verifier().verify_connect_token(make_token({}))).user == ""
    with pytest.raises(TokenError):
        await hmac_verifier().verify_connect_token(make_token({"sub": 12}))


async def test_connect_claims() -> None:
    claims = {
        "sub": "u",
        "info": {"name": "Ärger", "n": [1, 2]},
        "b64info": base64.b64encode(b"ignored").decode(),
        "channels": ["a", "b:c"],
        "meta": {"role": "admin"},
        "subs": {
            "news": {"info": {"x": 1}, "b64data": base64.b64encode(b"\x00\x01").decode(),
                     "override": {"presence": {"value": True}, "join_leave": {"value": False}}},
            "empty": {},
        },
    }
    tok = await hmac_verifier().verify_connect_token(make_token(claims))
    assert tok.user == "u"
    assert json.loads(tok.info or b"") == {"name": "Ärger", "n": [1, 2]}
    assert tok.info == '{"name":"Ärger","n":[1,2]}'.encode()
    assert tok.channels == ("a", "b:c")
    assert tok.meta == b'{"role":"admin"}'
    assert dict(tok.subs) == {
        "news": ServerSubClaims(info=b'{"x":1}', data=b"\x00\x01",
                                override=SubscribeOverride(presence=True, join_leave=False)),
        "empty": ServerSubClaims(),
    }
    only_b64 = await hmac_verifier().verify_connect_token(
        make_token({"b64info": base64.b64encode(b"\xffraw").decode()}))
    assert only_b64.info == b"\xffraw"
    scalar = await hmac_verifier().verify_connect_token(make_token({"info": "text", "meta": 5}))
    assert scalar.info == b'"text"'
    assert scalar.meta == b"5"


@pytest.mark.parametrize("claims", [
    {"channels": "a"},
    {"channels": ["a", 1]},
    {"subs": []},
    {"subs": {"a": 5}},
    {"subs": {"a": {"override": {"presence": True}}}},
    {"subs": {"a": {"override": {"presence": {"value": "yes"}}}}},
    {"subs": {"a": {"b64info": "!!notbase64"}}},
    {"b64info": 5},
    {"exp": "soon"},
    {"exp": True},
    {"nbf": [1]},
    {"expire_at": "1"},
    {"channel": "c"},
])
async def test_bad_connect_claims(claims: dict[str, Any]) -> None:
    with pytest.raises(TokenError):
        await hmac_verifier().verify_connect_token(make_token(claims))


async def test_subscribe_token() -> None:
    now = int(time.time())
    claims = {"sub": "u", "channel": "news", "client": "cid", "exp": now + 60, "info": {"a": 1},
              "b64data": base64.b64encode(b"bin").decode(),
              "override": {"force_recovery": {"value": True}, "force_positioning": {"value": False},
                           "force_push_join_leave": {"value": True}}}
    tok = await hmac_verifier().verify_subscribe_token(make_token(claims))
    assert tok == SubscribeToken(user="u", channel="news", client="cid", expire_at=now + 60, info=b'{"a":1}',
                                 data=b"bin", override=SubscribeOverride(force_push_join_leave=True,
                                                                         force_positioning=False,
                                                                         force_recovery=True))
    minimal = await hmac_verifier().verify_subscribe_token(make_token({"channel": "c", "data": [1]}))
    assert minimal == SubscribeToken(user="", channel="c", client="", expire_at=0, info=None, data=b"[1]",
                                     override=None)


@pytest.mark.parametrize("claims", [{}, {"channel": ""}, {"channel": 3}, {"channel": "c", "client": 1},
                                    {"channel": "c", "override": [1]}])
async def test_subscribe_token_bad(claims: dict[str, Any]) -> None:
    with pytest.raises(TokenError):
        await hmac_verifier().verify_subscribe_token(make_token(claims))


async def test_separate_subscription_token_config() -> None:
    v = JWTVerifier(TokenConfig(hmac_secret_key=SECRET),
                    TokenConfig(enabled=True, hmac_secret_key="sub-secret", audience="subs"))
    sub_tok = make_token({"channel": "c", "aud": "subs"}, key="sub-secret")
    assert (await v.verify_subscribe_token(sub_tok)).channel == "c"
    with pytest.raises(TokenError):
        await v.verify_subscribe_token(make_token({"channel": "c", "aud": "subs"}))
    with pytest.raises(TokenError):
        await v.verify_subscribe_token(make_token({"channel": "c"}, key="sub-secret"))
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"sub": "u"}, key="sub-secret"))
    # Not enabled: the subscription config is ignored and the connection one is used.
    v = JWTVerifier(TokenConfig(hmac_secret_key=SECRET), TokenConfig(hmac_secret_key="sub-secret"))
    assert (await v.verify_subscribe_token(make_token({"channel": "c"}))).channel == "c"
    with pytest.raises(TokenError):
        await v.verify_subscribe_token(sub_tok)


async def test_skip_signature() -> None:
    v = JWTVerifier(TokenConfig(), NO_SUB, skip_signature=True)
    tok = await v.verify_connect_token(make_token({"sub": "u", "info": 1}, key="whatever", alg="HS512"))
    assert (tok.user, tok.info) == ("u", b"1")
    h, p, _ = make_token({"channel": "c"}).split(".")
    assert (await v.verify_subscribe_token(f"{h}.{p}.")).channel == "c"
    with pytest.raises(TokenExpiredError):
        await v.verify_connect_token(make_token({"exp": int(time.time()) - 1}))
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"nbf": int(time.time()) + 100}))
    v = JWTVerifier(TokenConfig(audience="a"), NO_SUB, skip_signature=True)
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"aud": "b"}))


def _enc(obj: Any) -> str:
    return b64url(json.dumps(obj).encode())


HUGE_INT = b'{"exp": 1' + b"0" * 5000 + b"}"
NAN_EXP = b'{"exp": NaN}'


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c.d", "...", "!!!.x.y", "é.é.é",
    f"{b64url(b'not json')}.{_enc({})}.AA",
    f"{_enc([1])}.{_enc({})}.AA",
    f"{_enc({'alg': 'HS256'})}.{_enc([1])}.AA",
    f"{_enc({'alg': 'HS256'})}.{_enc('str')}.AA",
    f"{_enc({'alg': 'HS256'})}.{b64url(b'{bad')}.AA",
    f"{_enc({'alg': 'HS256'})}.{b64url(b'[' * 100000)}.AA",
    f"{_enc({'alg': 'HS256'})}.{b64url(HUGE_INT)}.AA",
    f"{_enc({'alg': 'HS256'})}.{b64url(NAN_EXP)}.AA",
    f"{_enc({'alg': 5})}.{_enc({})}.AA",
    f"{_enc({})}.{_enc({})}.AA",
    f"{_enc({'alg': 'HS256'})}.{_enc({})}.A",
    f"{_enc({'alg': 'HS256'})}.{_enc({})}.A=",
])
@pytest.mark.parametrize("kind", ["connect", "subscribe"])
async def test_garbage(token: str, kind: str, ec_key: ec.EllipticCurvePrivateKey) -> None:
    for skip in (False, True):
        v = JWTVerifier(TokenConfig(hmac_secret_key=SECRET, ecdsa_public_key=pem(ec_key.public_key())), NO_SUB,
                        skip_signature=skip)
        verify = v.verify_connect_token if kind == "connect" else v.verify_subscribe_token
        with pytest.raises(TokenError):
            await verify(token)


@pytest.mark.parametrize("token", [
    f"{_enc({'alg': 'HS999'})}.{_enc({})}.AA",
    f"{_enc({'alg': 'ES256'})}.{_enc({})}.AAAA",
    f"{_enc({'alg': 'ES256'})}.{_enc({})}.",
    f"{_enc({'alg': 'HS256'})}.{_enc({})}.",
])
async def test_garbage_signature(token: str, ec_key: ec.EllipticCurvePrivateKey) -> None:
    v = JWTVerifier(TokenConfig(hmac_secret_key=SECRET, ecdsa_public_key=pem(ec_key.public_key())), NO_SUB)
    with pytest.raises(TokenError):
        await v.verify_connect_token(token)


async def test_non_str_token() -> None:
    with pytest.raises(TokenError):
        await hmac_verifier().verify_connect_token(b"a.b.c")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# JWKS


@dataclass
class JWKSServer:
    url: str
    keys: list[Any]
    hits: int = 0
    fail_next: int = 0  # answer this many requests with HTTP 500
    body: bytes | None = None  # served instead of the key set when set
    paths: list[str] = field(default_factory=list)


def jwk(public_key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        d = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        d = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        d = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    return {**d, "kid": kid, **extra}


@pytest.fixture
async def jwks_server() -> AsyncIterator[JWKSServer]:
    state = JWKSServer(url="", keys=[])

    async def handler(request: web.Request) -> web.Response:
        state.hits += 1
        state.paths.append(request.path)
        if state.fail_next > 0:
            state.fail_next -= 1
            return web.Response(status=500)
        if state.body is not None:
            return web.Response(body=state.body, content_type="application/json")
        return web.json_response({"keys": state.keys})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("/jwks"))
    try:
        yield state
    finally:
        await server.close()


@pytest.fixture
async def make_jwks_verifier() -> AsyncIterator[Callable[..., JWTVerifier]]:
    made: list[JWTVerifier] = []

    def make(url: str, **kw: Any) -> JWTVerifier:
        v = JWTVerifier(TokenConfig(jwks_public_endpoint=url, **kw), NO_SUB)
        made.append(v)
        return v

    yield make
    for v in made:
        await v.close()


async def test_jwks_rsa_ec_okp(jwks_server: JWKSServer, make_jwks_verifier: Callable[..., JWTVerifier],
                               rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey,
                               ed_key: ed25519.Ed25519PrivateKey) -> None:
    jwks_server.keys = [jwk(rsa_key.public_key(), "r1"), jwk(ec_key.public_key(), "e1"),
                        jwk(ed_key.public_key(), "o1"), {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
                        {"kty": "weird", "kid": "w"}, "junk"]
    v = make_jwks_verifier(jwks_server.url)
    await v.start()
    assert (await v.verify_connect_token(make_token({"sub": "r"}, rsa_key, "RS256", kid="r1"))).user == "r"
    assert (await v.verify_connect_token(make_token({"sub": "r"}, rsa_key, "RS512", kid="r1"))).user == "r"
    assert (await v.verify_connect_token(make_token({"sub": "e"}, ec_key, "ES256", kid="e1"))).user == "e"
    assert (await v.verify_subscribe_token(make_token({"channel": "c"}, ed_key, "EdDSA", kid="o1"))).channel == "c"
    assert jwks_server.hits == 1  # cached
    # Wrong key for the kid, alg not matching the key's type, HMAC keys from JWKS and missing kid.
    for tok in (make_token({}, ec_key, "ES256", kid="r1"), make_token({}, rsa_key, "RS256", kid="e1"),
                make_token({}, "secret", "HS256", kid="h1"), make_token({}, rsa_key, "RS256")):
        with pytest.raises(TokenError):
            await v.verify_connect_token(tok)
    await v.close()
    await v.close()


async def test_jwks_is_the_only_method(jwks_server: JWKSServer,
                                       make_jwks_verifier: Callable[..., JWTVerifier]) -> None:
    v = make_jwks_verifier(jwks_server.url, hmac_secret_key=SECRET)
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"sub": "u"}, kid="x"))


async def test_jwks_declared_alg_restricts(jwks_server: JWKSServer, make_jwks_verifier: Callable[..., JWTVerifier],
                                           rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.keys = [jwk(rsa_key.public_key(), "r1", alg="RS384", use="sig"),
                        jwk(rsa_key.public_key(), "enc", use="enc")]
    v = make_jwks_verifier(jwks_server.url)
    assert (await v.verify_connect_token(make_token({}, rsa_key, "RS384", kid="r1"))).user == ""
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({}, rsa_key, "RS256", kid="r1"))
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({}, rsa_key, "RS256", kid="enc"))


async def test_jwks_unknown_kid_refetch(jwks_server: JWKSServer, make_jwks_verifier: Callable[..., JWTVerifier],
                                        rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    jwks_server.keys = [jwk(rsa_key.public_key(), "k1")]
    v = make_jwks_verifier(jwks_server.url)
    await v.verify_connect_token(make_token({}, rsa_key, "RS256", kid="k1"))
    assert jwks_server.hits == 1
    jwks_server.keys.append(jwk(rsa_key2.public_key(), "k2"))
    tok2 = make_token({"sub": "two"}, rsa_key2, "RS256", kid="k2")
    # Right after a fetch the refetch is rate-limited.
    with pytest.raises(TokenError, match="kid"):
        await v.verify_connect_token(tok2)
    assert jwks_server.hits == 1
    monkeypatch.setattr(jwtmod, "JWKS_REFETCH_INTERVAL", 0.0)
    assert (await v.verify_connect_token(tok2)).user == "two"
    assert jwks_server.hits == 2
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({}, rsa_key2, "RS256", kid="k3"))
    assert jwks_server.hits == 3


async def test_jwks_concurrent_fetches_coalesce(jwks_server: JWKSServer,
                                                make_jwks_verifier: Callable[..., JWTVerifier],
                                                rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.keys = [jwk(rsa_key.public_key(), "k1")]
    v = make_jwks_verifier(jwks_server.url)
    tok = make_token({"sub": "u"}, rsa_key, "RS256", kid="k1")
    results = await asyncio.gather(*(v.verify_connect_token(tok) for _ in range(5)))
    assert [r.user for r in results] == ["u"] * 5
    assert jwks_server.hits == 1


async def test_jwks_cache_expiry(jwks_server: JWKSServer, make_jwks_verifier: Callable[..., JWTVerifier],
                                 rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    jwks_server.keys = [jwk(rsa_key.public_key(), "k1")]
    v = make_jwks_verifier(jwks_server.url)
    tok = make_token({}, rsa_key, "RS256", kid="k1")
    await v.verify_connect_token(tok)
    monkeypatch.setattr(jwtmod, "JWKS_CACHE_TTL", 0.0)
    monkeypatch.setattr(jwtmod, "JWKS_REFETCH_INTERVAL", 0.0)
    await v.verify_connect_token(tok)
    assert jwks_server.hits == 2
    # Endpoint failing: the stale key stays usable.
    jwks_server.fail_next = 10
    await v.verify_connect_token(tok)


async def test_jwks_one_retry(jwks_server: JWKSServer, make_jwks_verifier: Callable[..., JWTVerifier],
                              rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.keys = [jwk(rsa_key.public_key(), "k1")]
    jwks_server.fail_next = 1
    v = make_jwks_verifier(jwks_server.url)
    await v.verify_connect_token(make_token({}, rsa_key, "RS256", kid="k1"))
    assert jwks_server.hits == 2


async def test_jwks_failing_endpoint(jwks_server: JWKSServer, make_jwks_verifier: Callable[..., JWTVerifier],
                                     rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.keys = [jwk(rsa_key.public_key(), "k1")]
    jwks_server.fail_next = 2
    v = make_jwks_verifier(jwks_server.url)
    with pytest.raises(TokenError, match="500"):
        await v.verify_connect_token(make_token({}, rsa_key, "RS256", kid="k1"))
    assert jwks_server.hits == 2


async def test_jwks_server_down(make_jwks_verifier: Callable[..., JWTVerifier], rsa_key: rsa.RSAPrivateKey) -> None:
    server = TestServer(web.Application(), host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("/jwks"))
    await server.close()
    v = make_jwks_verifier(url)
    await v.start()
    with pytest.raises(TokenError, match="JWKS"):
        await v.verify_connect_token(make_token({}, rsa_key, "RS256", kid="k1"))


async def test_jwks_bad_document(jwks_server: JWKSServer, make_jwks_verifier: Callable[..., JWTVerifier],
                                 rsa_key: rsa.RSAPrivateKey) -> None:
    tok = make_token({}, rsa_key, "RS256", kid="k1")
    for body in (b"[1, 2]", b"{not json", b'{"keys": 5}', b'{"keys": []}'):
        jwks_server.body = body
        v = make_jwks_verifier(jwks_server.url)
        with pytest.raises(TokenError):
            await v.verify_connect_token(tok)


async def test_jwks_url_variables(jwks_server: JWKSServer, make_jwks_verifier: Callable[..., JWTVerifier],
                                  rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.keys = [jwk(rsa_key.public_key(), "k1")]
    v = make_jwks_verifier(jwks_server.url + "/{{tenant}}", issuer_regex=r"https://(?P<tenant>\w+)\.example\.com")
    tok = make_token({"iss": "https://acme.example.com"}, rsa_key, "RS256", kid="k1")
    await v.verify_connect_token(tok)
    assert jwks_server.paths == ["/jwks/acme"]
    with pytest.raises(TokenError):
        await v.verify_connect_token(make_token({"iss": "nope"}, rsa_key, "RS256", kid="k1"))


async def test_skip_signature_never_fetches(jwks_server: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    v = JWTVerifier(TokenConfig(jwks_public_endpoint=jwks_server.url), NO_SUB, skip_signature=True)
    await v.start()
    assert (await v.verify_connect_token(make_token({"sub": "u"}, rsa_key, "RS256", kid="k"))).user == "u"
    assert jwks_server.hits == 0
    await v.close()
