"""Centrifugo's application policy: namespaces, channel rules, JWT-based authentication and permissions.

This is the part of Centrifugo that lives above the library (its ``internal/client`` handler): it decides who a
connection is, whether it may subscribe, publish, read history or presence, and with which options. The order
of checks and the error codes follow spec §2.6-§2.8 exactly, because SDKs react to the codes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from node.auth.jwt import ConnectToken, JWTVerifier, SubscribeOverride, SubscribeToken
from node.config import ChannelOptions, Config
from node.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_EXPIRED,
    DISCONNECT_INVALID_TOKEN,
    DISCONNECT_PERMISSION_DENIED,
    ERROR_BAD_REQUEST,
    ERROR_NOT_AVAILABLE,
    ERROR_PERMISSION_DENIED,
    ERROR_TOKEN_EXPIRED,
    ERROR_UNKNOWN_CHANNEL,
    DisconnectError,
    ReplyError,
    TokenError,
    TokenExpiredError,
)
from node.models import Identity, SubscribeOptions
from node.protocol import codec
from node.proxy.types import ConnectResult, SubscribeResult
from node.tagsfilter import InvalidFilter, TagsFilter

NAMESPACE_CACHE_SIZE: Final = 10000  # channels whose namespace is remembered (then forgotten all at once)


class Peer(Identity, Protocol):
    """Who asks: a connection as the policy sees it."""

    @property
    def channels(self) -> Collection[str]: ...


@dataclass(frozen=True, slots=True)
class ConnectDecision:
    user: str
    expire_at: int
    info: bytes | None
    data: bytes | None
    subs: dict[str, SubscribeOptions]
    meta: bytes | None = None  # the connection's meta (a token's ``meta`` claim, a connect proxy's ``meta``)


def check_data_format(ns: ChannelOptions, data: bytes) -> None:
    """The namespace's ``publication_data_format``, as Centrifugo checks it: "json" and "json_object" want valid
    JSON (an object), "binary" takes anything, even nothing; by default data must not be empty. 107 otherwise."""
    fmt = ns.publication_data_format
    if fmt == "binary":
        return
    if not data or (fmt in ("json", "json_object") and not codec.is_json(data)) or \
            (fmt == "json_object" and not data.lstrip().startswith(b"{")):
        raise ReplyError(ERROR_BAD_REQUEST)


def _tags_filter(ns: ChannelOptions, tf: object) -> TagsFilter | None:
    """The subscribe command's tags filter: 107 where the namespace does not allow one, or it is malformed."""
    if tf is None:
        return None
    if not ns.allow_tags_filter:
        raise ReplyError(ERROR_BAD_REQUEST)
    try:
        return TagsFilter(tf)
    except InvalidFilter:
        raise ReplyError(ERROR_BAD_REQUEST) from None


class Policy:
    def __init__(self, config: Config, verifier: JWTVerifier) -> None:
        self.config = config
        self.verifier = verifier
        self._namespaces = {ns.name: ns for ns in config.channel.namespaces}
        self._regexes: dict[str, re.Pattern[str]] = {}
        # channel → its namespace: a publish looks it up ~1 µs per batch item otherwise. A reload builds a new
        # Policy, so the cache never outlives the options it holds.
        self._channel_ns: dict[str, ChannelOptions] = {}
        for opts in (config.channel.without_namespace, *config.channel.namespaces):
            if opts.channel_regex:
                self._regexes[opts.channel_regex] = re.compile(opts.channel_regex)

    # --- channels --------------------------------------------------------------------------------------

    def namespace(self, channel: str) -> ChannelOptions:
        """The options of the channel's namespace; unknown namespace → 102."""
        ns = self._channel_ns.get(channel)
        if ns is None:
            ns = self._split(channel)[0]
            if len(self._channel_ns) >= NAMESPACE_CACHE_SIZE:
                self._channel_ns.clear()
            self._channel_ns[channel] = ns
        return ns

    def _split(self, channel: str) -> tuple[ChannelOptions, str]:
        cfg = self.config.channel
        name = channel.removeprefix(cfg.private_prefix) if cfg.private_prefix else channel
        ns_name, sep, rest = name.partition(cfg.namespace_boundary)
        if not sep:
            return cfg.without_namespace, name
        ns = self._namespaces.get(ns_name)
        if ns is None:
            raise ReplyError(ERROR_UNKNOWN_CHANNEL)
        return ns, rest

    def _check_name(self, channel: str) -> ChannelOptions:
        ns, rest = self._split(channel)
        if ns.channel_regex:
            if not self._regexes[ns.channel_regex].fullmatch(rest):
                raise ReplyError(ERROR_BAD_REQUEST)
        elif not channel.isascii():
            raise ReplyError(ERROR_BAD_REQUEST)
        return ns

    def _user_allowed(self, channel: str, user: str) -> bool:
        cfg = self.config.channel
        _, sep, users = channel.rpartition(cfg.user_boundary)
        return bool(sep) and bool(user) and user in users.split(cfg.user_separator)

    # --- connect and refresh ---------------------------------------------------------------------------

    async def connect(self, client: Peer, params: Mapping[str, Any],
                      ask: Callable[[], Awaitable[ConnectResult | None]] | None = None) -> ConnectDecision:
        """``ask``: the connect proxy's call, made for a connection without a token (None: no connect proxy)."""
        cfg = self.config.client
        token = params.get("token") or ""
        if not isinstance(token, str):
            raise DisconnectError(DISCONNECT_BAD_REQUEST)
        if not token:
            # As in Centrifugo, the connect proxy authenticates the connections that come without a token.
            if ask is not None and (result := await ask()) is not None:
                return self.proxy_decision(result)
            if cfg.allow_anonymous_connect_without_token or cfg.insecure:
                return ConnectDecision("", 0, None, None, {})
            raise DisconnectError(DISCONNECT_BAD_REQUEST)
        claims = await self._connect_claims(token, ReplyError(ERROR_TOKEN_EXPIRED))
        if not claims.user and cfg.disallow_anonymous_connection_tokens:
            raise DisconnectError(DISCONNECT_PERMISSION_DENIED)
        subs: dict[str, SubscribeOptions] = {}
        for channel in claims.channels:
            subs[channel] = self._options(self.namespace(channel), claims.user, {}, None)
        for channel, sub in claims.subs.items():
            subs[channel] = self._options(self.namespace(channel), claims.user, {}, sub.override,
                                          chan_info=sub.info, data=sub.data)
        return ConnectDecision(claims.user, claims.expire_at, claims.info, None, subs, claims.meta)

    def personal_channel(self, user: str) -> str:
        """The user's personal channel (``client.subscribe_to_user_personal_channel``), as Centrifugo names it."""
        cfg = self.config
        ns = cfg.client.subscribe_to_user_personal_channel.personal_channel_namespace
        return f"{ns}{cfg.channel.namespace_boundary}{cfg.channel.user_boundary}{user}" if ns else \
            f"{cfg.channel.user_boundary}{user}"

    def personal_options(self, channel: str) -> SubscribeOptions:
        """A personal channel's server-side subscription: what its namespace forces (presence, join/leave,
        pushed join/leave, positioning, recovery), nothing a client could ask for."""
        ns = self.namespace(channel)
        return SubscribeOptions(
            emit_presence=ns.presence, emit_join_leave=ns.join_leave, push_join_leave=ns.force_push_join_leave,
            enable_positioning=ns.history_enabled and (ns.force_positioning or ns.force_recovery),
            enable_recovery=ns.history_enabled and ns.force_recovery,
            recovery_mode_cache=ns.force_recovery_mode == "cache", history_meta_ttl=ns.history_meta_ttl)

    def proxy_decision(self, result: ConnectResult) -> ConnectDecision:
        subs: dict[str, SubscribeOptions] = {}
        for channel in result.channels:
            subs[channel] = self._options(self.namespace(channel), result.user, {}, None)
        for channel, sub in result.subs.items():
            subs[channel] = self._options(self.namespace(channel), result.user, {}, sub.override,
                                          expire_at=sub.expire_at, chan_info=sub.info, data=sub.data)
        return ConnectDecision(result.user, result.expire_at, result.info, result.data, subs, result.meta)

    async def refresh(self, client: Peer, token: str) -> tuple[int, bytes | None]:
        claims = await self._connect_claims(token, DisconnectError(DISCONNECT_EXPIRED))
        if claims.user != client.user:
            raise DisconnectError(DISCONNECT_INVALID_TOKEN)
        return claims.expire_at, claims.info

    async def _connect_claims(self, token: str, expired: ReplyError | DisconnectError) -> ConnectToken:
        """The verified claims of a connection token; ``expired`` is raised for an expired one (a connect is
        told to refresh, a refresh is disconnected), 3500 for any other invalid token."""
        try:
            return await self.verifier.verify_connect_token(token)
        except TokenExpiredError:
            raise expired from None
        except TokenError:
            raise DisconnectError(DISCONNECT_INVALID_TOKEN) from None

    # --- subscriptions ---------------------------------------------------------------------------------

    async def subscribe(self, client: Peer, channel: str, params: Mapping[str, Any],
                        ask: Callable[[], Awaitable[SubscribeResult]] | None = None) -> SubscribeOptions:
        """``ask``: the namespace's subscribe proxy call, made when no subscription token decides."""
        ns = self._check_name(channel)
        token = params.get("token") or ""
        if not isinstance(token, str):
            raise DisconnectError(DISCONNECT_BAD_REQUEST)
        private = bool(self.config.channel.private_prefix) and channel.startswith(self.config.channel.private_prefix)
        if private and not token:
            raise ReplyError(ERROR_PERMISSION_DENIED)
        if token:
            claims = await self._verify_sub_token(client, channel, token)
            return self._options(ns, client.user, params, claims.override, expire_at=claims.expire_at,
                                 chan_info=claims.info, data=claims.data)
        if ask is not None:
            result = await ask()
            return self._options(ns, client.user, params, result.override, expire_at=result.expire_at,
                                 chan_info=result.info, data=result.data)
        if ns.allow_user_limited_channels and self._user_allowed(channel, client.user):
            return self._options(ns, client.user, params, None)
        if ns.allow_subscribe_for_client and (client.user or ns.allow_subscribe_for_anonymous):
            return self._options(ns, client.user, params, None)
        if self.config.client.insecure:
            return self._options(ns, client.user, params, None)
        raise ReplyError(ERROR_PERMISSION_DENIED)

    async def _verify_sub_token(self, client: Peer, channel: str, token: str) -> SubscribeToken:
        try:
            claims = await self.verifier.verify_subscribe_token(token)
        except TokenExpiredError:
            raise ReplyError(ERROR_TOKEN_EXPIRED) from None
        except TokenError:
            raise ReplyError(ERROR_PERMISSION_DENIED) from None
        if claims.channel != channel or claims.user != client.user or (claims.client and claims.client != client.id):
            raise DisconnectError(DISCONNECT_INVALID_TOKEN)
        return claims

    async def sub_refresh(self, client: Peer, channel: str, token: str) -> int:
        claims = await self._verify_sub_token(client, channel, token)
        return int(claims.expire_at)

    def _options(self, ns: ChannelOptions, user: str, params: Mapping[str, Any],
                 override: SubscribeOverride | None, *, expire_at: int = 0, chan_info: bytes | None = None,
                 data: bytes | None = None) -> SubscribeOptions:
        """Resolve one subscription's behaviour from namespace options, the request's flags and overrides."""

        def pick(base: bool, name: str) -> bool:
            value = getattr(override, name, None) if override is not None else None
            return base if value is None else bool(value)

        presence_access = self._access(ns.allow_presence_for_client, ns.allow_presence_for_subscriber,
                                       ns.allow_presence_for_anonymous, user, subscribed=True)
        history_access = ns.history_enabled and self._access(
            ns.allow_history_for_client, ns.allow_history_for_subscriber, ns.allow_history_for_anonymous, user,
            subscribed=True)
        join_leave = pick(ns.join_leave, "join_leave")
        positioning = ns.history_enabled and (
            pick(ns.force_positioning, "force_positioning")
            or (params.get("positioned") is True and (ns.allow_positioning or history_access)))
        recovery = ns.history_enabled and (
            pick(ns.force_recovery, "force_recovery")
            or (params.get("recoverable") is True and (ns.allow_recovery or history_access)))
        push_join_leave = pick(ns.force_push_join_leave, "force_push_join_leave") or (
            join_leave and params.get("join_leave") is True and presence_access)
        return SubscribeOptions(
            expire_at=expire_at,
            chan_info=chan_info,
            data=data,
            emit_presence=pick(ns.presence, "presence"),
            emit_join_leave=join_leave,
            push_join_leave=push_join_leave,
            enable_positioning=positioning or recovery,
            enable_recovery=recovery,
            recovery_mode_cache=ns.force_recovery_mode == "cache",
            history_meta_ttl=ns.history_meta_ttl,
            delta=params.get("delta") == "fossil" and "fossil" in ns.allowed_delta_types and (positioning or recovery),
            publish_debounce=round(ns.client_publish_debounce_interval * 1000),
            tags_filter=_tags_filter(ns, params.get("tf")),
        )

    def _access(self, for_client: bool, for_subscriber: bool, for_anonymous: bool, user: str, *,
                subscribed: bool) -> bool:
        if self.config.client.insecure:
            return True
        if not user and not for_anonymous:
            return False
        return for_client or (for_subscriber and subscribed)

    # --- other commands --------------------------------------------------------------------------------

    def _require(self, client: Peer, channel: str, for_client: bool, for_subscriber: bool,
                 for_anonymous: bool) -> None:
        if not self._access(for_client, for_subscriber, for_anonymous, client.user,
                            subscribed=channel in client.channels):
            raise ReplyError(ERROR_PERMISSION_DENIED)

    def check_publish(self, client: Peer, channel: str, data: bytes) -> ChannelOptions:
        """Permission to publish from the client side (not asked when a publish proxy decides instead)."""
        ns = self.namespace(channel)
        self._require(client, channel, ns.allow_publish_for_client, ns.allow_publish_for_subscriber,
                      ns.allow_publish_for_anonymous)
        check_data_format(ns, data)
        return ns

    def check_map_write(self, client: Peer, channel: str, *, remove: bool) -> ChannelOptions:
        """Permission for a client's map publish (or remove) by the namespace's ``map`` options."""
        ns, m = self.namespace(channel), self.namespace(channel).map
        if remove:
            self._require(client, channel, m.allow_remove_for_client, m.allow_remove_for_subscriber,
                          m.allow_remove_for_anonymous)
        else:
            self._require(client, channel, m.allow_publish_for_client, m.allow_publish_for_subscriber,
                          m.allow_publish_for_anonymous)
        return ns

    def check_history(self, client: Peer, channel: str) -> ChannelOptions:
        ns = self.namespace(channel)
        self._check_read(client, channel, ns.history_enabled, ns.allow_history_for_client,
                         ns.allow_history_for_subscriber, ns.allow_history_for_anonymous)
        return ns

    def check_presence(self, client: Peer, channel: str) -> ChannelOptions:
        ns = self.namespace(channel)
        self._check_read(client, channel, ns.presence, ns.allow_presence_for_client,
                         ns.allow_presence_for_subscriber, ns.allow_presence_for_anonymous)
        return ns

    def _check_read(self, client: Peer, channel: str, enabled: bool, for_client: bool, for_subscriber: bool,
                    for_anonymous: bool) -> None:
        """History or presence: 108 where the namespace keeps none, 103 where the client may not read it."""
        if not enabled:
            raise ReplyError(ERROR_NOT_AVAILABLE)
        self._require(client, channel, for_client, for_subscriber, for_anonymous)

    def server_subscribe_options(self, channel: str, override: SubscribeOverride | None, *, expire_at: int = 0,
                                 chan_info: bytes | None = None, data: bytes | None = None) -> SubscribeOptions:
        """Options for a subscription made by the server API (namespace options plus overrides)."""
        return self._options(self.namespace(channel), "", {}, override, expire_at=expire_at, chan_info=chan_info,
                             data=data)
