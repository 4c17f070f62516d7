"""The PostgreSQL map broker's tables and functions (node/broker/postgres_map.py). ``{b}`` is the table prefix
(``cf``, or ``cf_binary`` with ``binary_data``), ``{data}`` the SQL type applications pass data as.

* ``{b}_map_meta``: per channel the stream's epoch and top offset, how long it keeps changes and up to where
  they were removed (``remove_history``).
* ``{b}_map_state``: the current entry of each key (keys in byte order: ``COLLATE "C"``, the pages' order) and
  its ``version``/``version_epoch``.
* ``{b}_map_stream``: every change, numbered per delivery shard (``seq``). A shard's counter row is locked until
  the change commits, so within a shard ``seq`` order is commit order and a reader that has seen ``seq`` n has
  seen everything before it: nodes poll ``seq > last`` per shard and never miss a late commit. A change offered
  as a fossil delta keeps the key's previous value (``prev_data``), the base of each node's patches.
* ``{b}_map_result``: the first result of a write made with an idempotency key, kept ``idempotent_result_ttl``.
* ``{b}_map_apply``: one change (set, remove, expire-if-expired, or a plain stream append) in one transaction,
  unless a condition does not hold (idempotency key seen, version, key mode, expected position: Centrifugo's
  order and suppress reasons).
* ``{b}_map_publish`` / ``{b}_map_remove`` and their ``_strict`` forms: Centrifugo's functions for applications'
  own SQL transactions (its names, argument order and result columns), on top of ``{b}_map_apply``.

A database made by an earlier version is upgraded in place: columns are added ``IF NOT EXISTS`` and functions
whose signature changed are dropped by their old signature before the new ones are created.

Data is kept as BYTEA whatever ``binary_data`` says, so a payload comes back byte for byte as it was given."""

from __future__ import annotations

import textwrap
from typing import Final

SCHEMA: Final = r"""
CREATE TABLE IF NOT EXISTS {b}_map_settings (
    id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    num_shards INTEGER NOT NULL,
    use_notify BOOLEAN NOT NULL
);
INSERT INTO {b}_map_settings (num_shards, use_notify) VALUES ({num_shards}, {use_notify})
    ON CONFLICT (id) DO UPDATE SET num_shards = EXCLUDED.num_shards, use_notify = EXCLUDED.use_notify;

CREATE TABLE IF NOT EXISTS {b}_map_shard (shard INTEGER PRIMARY KEY, seq BIGINT NOT NULL DEFAULT 0);
INSERT INTO {b}_map_shard (shard) SELECT generate_series(0, {num_shards} - 1) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS {b}_map_meta (
    channel TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    top BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL,
    stream_size INTEGER NOT NULL DEFAULT 0,
    stream_expires_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    removed_to BIGINT NOT NULL DEFAULT 0  -- remove_history: changes up to this offset are gone
);
ALTER TABLE {b}_map_meta ADD COLUMN IF NOT EXISTS removed_to BIGINT NOT NULL DEFAULT 0;
-- The stream TTL of the channel's last change, for applications' changes that name none.
ALTER TABLE {b}_map_meta ADD COLUMN IF NOT EXISTS stream_ttl INTERVAL;
CREATE INDEX IF NOT EXISTS {b}_map_meta_expires ON {b}_map_meta (expires_at);

-- The last offset of a stream that no read returns any more: past its size (0: unbounded) or removed.
CREATE OR REPLACE FUNCTION {b}_map_floor(p_top BIGINT, p_size INTEGER, p_removed_to BIGINT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE AS $$
    SELECT greatest(CASE WHEN p_size > 0 THEN p_top - p_size ELSE 0 END, p_removed_to)
$$;

CREATE TABLE IF NOT EXISTS {b}_map_state (
    channel TEXT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    data BYTEA NOT NULL,
    info BYTEA,
    tags JSONB,
    stream_offset BIGINT NOT NULL,
    expires_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, key)
);
ALTER TABLE {b}_map_state ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE {b}_map_state ADD COLUMN IF NOT EXISTS version_epoch TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS {b}_map_state_expires ON {b}_map_state (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS {b}_map_stream (
    shard INTEGER NOT NULL,
    seq BIGINT NOT NULL,
    channel TEXT NOT NULL,
    channel_offset BIGINT NOT NULL,
    epoch TEXT NOT NULL,
    key TEXT NOT NULL,
    data BYTEA NOT NULL,
    removed BOOLEAN NOT NULL DEFAULT FALSE,
    info BYTEA,
    tags JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (shard, seq)
);
-- A change offered as a fossil delta: the key's value before it, the patch's base (NULL: offered in full).
ALTER TABLE {b}_map_stream ADD COLUMN IF NOT EXISTS prev_data BYTEA;
CREATE INDEX IF NOT EXISTS {b}_map_stream_channel ON {b}_map_stream (channel, channel_offset);
CREATE INDEX IF NOT EXISTS {b}_map_stream_created ON {b}_map_stream (created_at);

-- The first result of a write made with an idempotency key, until it expires.
CREATE TABLE IF NOT EXISTS {b}_map_result (
    channel TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    channel_offset BIGINT NOT NULL,
    epoch TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel, idempotency_key)
);
CREATE INDEX IF NOT EXISTS {b}_map_result_expires ON {b}_map_result (expires_at);

CREATE OR REPLACE FUNCTION {b}_map_epoch() RETURNS TEXT LANGUAGE sql VOLATILE AS $$
    SELECT string_agg(substr('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ',
                             1 + floor(random() * 52)::int, 1), '')
    FROM generate_series(1, 8)
$$;

-- Earlier forms (fewer options; publish/remove in an order other than Centrifugo's) would be ambiguous next to
-- the current ones: an existing database is upgraded by dropping them.
DROP FUNCTION IF EXISTS {b}_map_apply(TEXT, TEXT, TEXT, BYTEA, TEXT, INTERVAL, INTERVAL, INTEGER, INTERVAL, BYTEA,
                                      JSONB);
DROP FUNCTION IF EXISTS {b}_map_apply(TEXT, TEXT, TEXT, BYTEA, TEXT, INTERVAL, INTERVAL, INTEGER, INTERVAL, BYTEA,
                                      JSONB, BIGINT, TEXT, TEXT, INTERVAL, BOOLEAN);
DROP FUNCTION IF EXISTS {b}_map_publish(TEXT, TEXT, {data}, TEXT, INTERVAL, INTERVAL, INTEGER, INTERVAL, JSONB);
DROP FUNCTION IF EXISTS {b}_map_remove(TEXT, TEXT, INTERVAL, INTEGER, INTERVAL);
CREATE OR REPLACE FUNCTION {b}_map_apply(
    p_op TEXT, p_channel TEXT, p_key TEXT, p_data BYTEA, p_key_mode TEXT, p_key_ttl INTERVAL,
    p_meta_ttl INTERVAL, p_stream_size INTEGER, p_stream_ttl INTERVAL, p_info BYTEA, p_tags JSONB,
    p_version BIGINT DEFAULT 0, p_version_epoch TEXT DEFAULT '', p_idempotency_key TEXT DEFAULT NULL,
    p_result_ttl INTERVAL DEFAULT NULL, p_use_delta BOOLEAN DEFAULT FALSE, p_expected_offset BIGINT DEFAULT NULL,
    p_expected_epoch TEXT DEFAULT NULL, p_refresh_ttl_on_suppress BOOLEAN DEFAULT FALSE)
RETURNS TABLE (result_id BIGINT, channel_offset BIGINT, epoch TEXT, suppressed BOOLEAN, suppress_reason TEXT,
               current_data BYTEA, current_offset BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch TEXT;
    v_top BIGINT;
    v_meta_expires TIMESTAMPTZ;
    v_key_expires TIMESTAMPTZ;
    v_key_offset BIGINT;
    v_found BOOLEAN;
    v_live BOOLEAN;
    v_version BIGINT;
    v_version_epoch TEXT;
    v_prev_data BYTEA;
    v_prev_tags JSONB;
    v_shard INTEGER;
    v_seq BIGINT;
    v_settings {b}_map_settings%ROWTYPE;
BEGIN
    -- A removal does not start a channel's stream: on a channel never written to it answers offset 0 and no
    -- epoch (Centrifugo's remove does); any other change, even a refused one, starts it with a new epoch.
    IF p_op NOT IN ('remove', 'expire') THEN
        INSERT INTO {b}_map_meta AS m (channel, epoch, expires_at)
            -- No p_meta_ttl: a permanent meta, as Centrifugo's NULL p_meta_ttl (its persistent maps).
            VALUES (p_channel, {b}_map_epoch(), coalesce(now() + p_meta_ttl, 'infinity'))
            ON CONFLICT (channel) DO NOTHING;
    END IF;
    SELECT m.epoch, m.top, m.expires_at INTO v_epoch, v_top, v_meta_expires
        FROM {b}_map_meta m WHERE m.channel = p_channel FOR UPDATE;
    IF NOT FOUND THEN  -- a removal on a channel without a stream: no key can be there
        RETURN QUERY SELECT NULL::BIGINT, 0::BIGINT, ''::TEXT, TRUE, 'key_not_found'::TEXT, NULL::BYTEA,
                            NULL::BIGINT;
        RETURN;
    END IF;
    IF v_meta_expires <= now() THEN  -- the stream's meta expired: a new epoch starts from offset 0
        v_epoch := {b}_map_epoch();
        v_top := 0;
    END IF;
    -- Checked in Centrifugo's order: idempotency, version, key mode, expected position (then, for a removal,
    -- whether the key is there).
    IF p_idempotency_key IS NOT NULL THEN  -- a write seen before: its first result, nothing changed
        RETURN QUERY SELECT NULL::BIGINT, r.channel_offset, r.epoch, TRUE, 'idempotency'::TEXT, NULL::BYTEA,
                            NULL::BIGINT FROM {b}_map_result r
            WHERE r.channel = p_channel AND r.idempotency_key = p_idempotency_key AND r.expires_at > now();
        IF FOUND THEN RETURN; END IF;
    END IF;
    IF p_op <> 'append' THEN
        SELECT TRUE, s.expires_at, s.version, s.version_epoch, s.data, s.tags, s.stream_offset
            INTO v_found, v_key_expires, v_version, v_version_epoch, v_prev_data, v_prev_tags, v_key_offset
            FROM {b}_map_state s WHERE s.channel = p_channel AND s.key = p_key FOR UPDATE;
        -- A key past its TTL is there until its removal is in the stream (the cleanup round's 'expire'): it
        -- counts for versions, key modes, the expected position and delta bases, as Centrifugo's physical
        -- existence check. Only a plain removal treats it as gone (as Centrifugo's remove).
        v_found := coalesce(v_found, FALSE);
        v_live := v_found AND (v_key_expires IS NULL OR v_key_expires > now());
        IF p_op = 'set' AND v_found AND p_version > 0 AND v_version > 0
                AND p_version_epoch IN ('', v_version_epoch) AND p_version <= v_version THEN
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE, 'version'::TEXT, NULL::BYTEA, NULL::BIGINT;
            RETURN;
        ELSIF p_op = 'set' AND p_key_mode = 'if_new' AND v_found THEN
            IF p_refresh_ttl_on_suppress AND p_key_ttl > interval '0' THEN  -- a keepalive: the entry lives on
                UPDATE {b}_map_state s SET expires_at = now() + p_key_ttl, updated_at = now()
                    WHERE s.channel = p_channel AND s.key = p_key;
                IF p_meta_ttl IS NOT NULL THEN
                    UPDATE {b}_map_meta m SET expires_at = greatest(m.expires_at, now() + p_meta_ttl)
                        WHERE m.channel = p_channel;
                END IF;
            END IF;
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE, 'key_exists'::TEXT, NULL::BYTEA, NULL::BIGINT;
            RETURN;
        ELSIF p_op = 'set' AND p_key_mode = 'if_exists' AND NOT v_found THEN
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE, 'key_not_found'::TEXT, NULL::BYTEA,
                                NULL::BIGINT;
            RETURN;
        ELSIF p_expected_offset IS NOT NULL AND (NOT v_found OR v_key_offset <> p_expected_offset
                                                 OR v_epoch <> coalesce(p_expected_epoch, v_epoch)) THEN
            -- The key moved on since the caller read it: its current value and offset, to retry with.
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE, 'position_mismatch'::TEXT,
                                CASE WHEN v_found THEN v_prev_data END, CASE WHEN v_found THEN v_key_offset END;
            RETURN;
        ELSIF p_op = 'remove' AND NOT v_live THEN
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE, 'key_not_found'::TEXT, NULL::BYTEA,
                                NULL::BIGINT;
            RETURN;
        ELSIF p_op = 'expire' AND NOT (v_found AND v_key_expires IS NOT NULL AND v_key_expires <= now()) THEN
            RETURN QUERY SELECT NULL::BIGINT, v_top, v_epoch, TRUE, 'key_not_found'::TEXT, NULL::BYTEA,
                                NULL::BIGINT;
            RETURN;
        END IF;
    END IF;
    v_top := v_top + 1;
    UPDATE {b}_map_meta m SET removed_to = CASE WHEN m.epoch = v_epoch THEN m.removed_to ELSE 0 END,
        epoch = v_epoch, top = v_top,
        -- No p_meta_ttl (Centrifugo's NULL): the meta keeps its expiry, permanent for a channel it starts anew.
        expires_at = coalesce(now() + p_meta_ttl, CASE WHEN m.expires_at > now() THEN m.expires_at END,
                              'infinity'),
        stream_size = coalesce(p_stream_size, 0), stream_ttl = p_stream_ttl,
        stream_expires_at = now() + coalesce(p_stream_ttl, interval '0')
        WHERE m.channel = p_channel;
    IF p_op = 'set' THEN
        -- An unversioned write keeps the key's version.
        INSERT INTO {b}_map_state AS s (channel, key, data, info, tags, stream_offset, expires_at, version,
                                        version_epoch)
            VALUES (p_channel, p_key, p_data, p_info, p_tags, v_top,
                    CASE WHEN p_key_ttl > interval '0' THEN now() + p_key_ttl END, p_version, p_version_epoch)
            ON CONFLICT (channel, key) DO UPDATE SET data = EXCLUDED.data, info = EXCLUDED.info,
                tags = EXCLUDED.tags, stream_offset = EXCLUDED.stream_offset, expires_at = EXCLUDED.expires_at,
                version = CASE WHEN p_version > 0 OR NOT v_found THEN p_version ELSE s.version END,
                version_epoch = CASE WHEN p_version > 0 OR NOT v_found THEN p_version_epoch ELSE s.version_epoch END,
                updated_at = now();
    ELSIF p_op IN ('remove', 'expire') THEN
        DELETE FROM {b}_map_state s WHERE s.channel = p_channel AND s.key = p_key;
    END IF;
    SELECT * INTO v_settings FROM {b}_map_settings;
    v_shard := mod(hashtext(p_channel)::BIGINT + 2147483648, v_settings.num_shards)::INTEGER;
    UPDATE {b}_map_shard sh SET seq = sh.seq + 1 WHERE sh.shard = v_shard RETURNING sh.seq INTO v_seq;
    INSERT INTO {b}_map_stream (shard, seq, channel, channel_offset, epoch, key, data, removed, info, tags,
                                prev_data)
        VALUES (v_shard, v_seq, p_channel, v_top, v_epoch, coalesce(p_key, ''), p_data,
                -- A removal carries the entry's tags (as Centrifugo's does): tags-filtered subscribers see it.
                p_op IN ('remove', 'expire'), p_info,
                CASE WHEN p_op IN ('remove', 'expire') THEN coalesce(p_tags, v_prev_tags) ELSE p_tags END,
                CASE WHEN p_use_delta AND p_op = 'set' AND v_found THEN v_prev_data END);
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO {b}_map_result AS r VALUES (p_channel, p_idempotency_key, v_top, v_epoch,
                                                now() + coalesce(p_result_ttl, interval '300 seconds'))
            ON CONFLICT (channel, idempotency_key) DO UPDATE SET channel_offset = EXCLUDED.channel_offset,
                epoch = EXCLUDED.epoch, expires_at = EXCLUDED.expires_at;
    END IF;
    IF v_settings.use_notify THEN
        PERFORM pg_notify('{b}_map_stream', v_shard::TEXT);
    END IF;
    -- result_id: the change's number in its delivery shard's stream (Centrifugo's: its stream row id).
    RETURN QUERY SELECT v_seq, v_top, v_epoch, FALSE, ''::TEXT, NULL::BYTEA, NULL::BIGINT;
END;
$$;

-- A publication's client info as the nodes read it: MessagePack [client, user, conn_info, chan_info] (NULL: none).
CREATE OR REPLACE FUNCTION {b}_map_msgpack_len(p_len INTEGER, p_small INTEGER, p_tags BYTEA) RETURNS BYTEA
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_small > 0 AND p_len < 32 THEN set_byte('\x00'::BYTEA, 0, p_small + p_len)
                WHEN p_len < 256 THEN substr(p_tags, 1, 1) || set_byte('\x00'::BYTEA, 0, p_len)
                WHEN p_len < 65536 THEN substr(p_tags, 2, 1) || substr(int4send(p_len), 3)
                ELSE substr(p_tags, 3, 1) || int4send(p_len) END
$$;
CREATE OR REPLACE FUNCTION {b}_map_info(p_client_id TEXT, p_user_id TEXT, p_conn_info BYTEA, p_chan_info BYTEA)
RETURNS BYTEA LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN num_nonnulls(p_client_id, p_user_id, p_conn_info, p_chan_info) > 0 THEN
        '\x94'::BYTEA
        || {b}_map_msgpack_len(octet_length(convert_to(coalesce(p_client_id, ''), 'UTF8')), 160, '\xd9dadb'::BYTEA)
        || convert_to(coalesce(p_client_id, ''), 'UTF8')
        || {b}_map_msgpack_len(octet_length(convert_to(coalesce(p_user_id, ''), 'UTF8')), 160, '\xd9dadb'::BYTEA)
        || convert_to(coalesce(p_user_id, ''), 'UTF8')
        || coalesce({b}_map_msgpack_len(octet_length(p_conn_info), 0, '\xc4c5c6'::BYTEA) || p_conn_info, '\xc0')
        || coalesce({b}_map_msgpack_len(octet_length(p_chan_info), 0, '\xc4c5c6'::BYTEA) || p_chan_info, '\xc0')
    END
$$;

-- A channel's stream bounds for an application's change that names none: those of its last change (written
-- by a node, from the namespace's history options), else 100 changes kept 1 minute.
CREATE OR REPLACE FUNCTION {b}_map_stream_size(p_channel TEXT, p_size INTEGER) RETURNS INTEGER
LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_size, (SELECT m.stream_size FROM {b}_map_meta m WHERE m.channel = p_channel), 100)
$$;
CREATE OR REPLACE FUNCTION {b}_map_stream_ttl(p_channel TEXT, p_ttl INTERVAL) RETURNS INTERVAL
LANGUAGE sql STABLE AS $$
    SELECT coalesce(p_ttl, (SELECT m.stream_ttl FROM {b}_map_meta m WHERE m.channel = p_channel),
                    interval '1 minute')
$$;

-- An application's p_meta_ttl, refused (SQLSTATE P0001, raise_exception) unless the channel's meta outlives its
-- keys, as Centrifugo's publish refuses it: not shorter than p_key_ttl, and none (permanent) for permanent keys.
-- IMMUTABLE: it depends on its arguments only (raising is allowed).
CREATE OR REPLACE FUNCTION {b}_map_meta_ttl(p_key_ttl INTERVAL, p_meta_ttl INTERVAL) RETURNS INTERVAL
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_meta_ttl IS NOT NULL AND p_key_ttl IS NULL THEN
        RAISE EXCEPTION '{b}_map_publish: p_meta_ttl must be NULL (permanent) when p_key_ttl is NULL';
    ELSIF p_meta_ttl < p_key_ttl THEN
        RAISE EXCEPTION '{b}_map_publish: p_meta_ttl (%) is shorter than p_key_ttl (%)', p_meta_ttl, p_key_ttl;
    END IF;
    RETURN p_meta_ttl;
END;
$$;

-- Centrifugo's functions for applications' own transactions: its names, arguments (in its order: PUBLISH_ARGS,
-- REMOVE_ARGS) and result columns.
CREATE OR REPLACE FUNCTION {b}_map_publish(
    {publish_args})
{result} {b}_map_apply('set', p_channel, p_key, {to_bytes}, p_key_mode, p_key_ttl,
                       {b}_map_meta_ttl(p_key_ttl, p_meta_ttl),
                       {b}_map_stream_size(p_channel, p_stream_size), {b}_map_stream_ttl(p_channel, p_stream_ttl),
                       {b}_map_info(p_client_id, p_user_id, {conn_bytes}, {chan_bytes}), p_tags,
                       coalesce(p_key_version, 0), coalesce(p_key_version_epoch, ''), p_idempotency_key,
                       p_idempotency_ttl, p_use_delta, p_expected_offset, p_expected_epoch,
                       p_refresh_ttl_on_suppress) a
$$;

CREATE OR REPLACE FUNCTION {b}_map_remove(
    {remove_args})
{result} {b}_map_apply('remove', p_channel, p_key, ''::BYTEA, NULL, NULL, p_meta_ttl,
                       {b}_map_stream_size(p_channel, p_stream_size), {b}_map_stream_ttl(p_channel, p_stream_ttl),
                       {b}_map_info(p_client_id, p_user_id, NULL, NULL), NULL, 0, '', p_idempotency_key,
                       p_idempotency_ttl, FALSE, p_expected_offset, p_expected_epoch, FALSE) a
$$;

-- The _strict forms raise where the others report a suppressed write, so the application's transaction
-- rolls back (Centrifugo's SQLSTATEs per reason).
CREATE OR REPLACE FUNCTION {b}_map_publish_strict(
    {publish_args})
RETURNS TABLE (result_id BIGINT, channel_offset BIGINT, epoch TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
BEGIN
    SELECT * INTO r FROM {b}_map_publish({publish_call});
    IF r.suppressed THEN
        CASE r.suppress_reason
            WHEN 'key_exists' THEN
                RAISE EXCEPTION '{b}_map_publish: key already exists: %.%', p_channel, p_key
                    USING ERRCODE = 'unique_violation';
            WHEN 'key_not_found' THEN
                RAISE EXCEPTION '{b}_map_publish: key not found: %.%', p_channel, p_key
                    USING ERRCODE = 'no_data_found';
            WHEN 'position_mismatch' THEN
                RAISE EXCEPTION '{b}_map_publish: CAS conflict on %.%', p_channel, p_key
                    USING ERRCODE = 'serialization_failure', DETAIL = coalesce(r.current_data::TEXT, '');
            WHEN 'version' THEN
                RAISE EXCEPTION '{b}_map_publish: version conflict on %.%', p_channel, p_key
                    USING ERRCODE = 'serialization_failure';
            WHEN 'idempotency' THEN
                RAISE EXCEPTION '{b}_map_publish: duplicate idempotency key: %.%', p_channel, p_key
                    USING ERRCODE = 'unique_violation';
            ELSE
                RAISE EXCEPTION '{b}_map_publish: suppressed: %', r.suppress_reason;
        END CASE;
    END IF;
    RETURN QUERY SELECT r.result_id, r.channel_offset, r.epoch;
END;
$$;

CREATE OR REPLACE FUNCTION {b}_map_remove_strict(
    {remove_args})
RETURNS TABLE (result_id BIGINT, channel_offset BIGINT, epoch TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
BEGIN
    SELECT * INTO r FROM {b}_map_remove({remove_call});
    IF r.suppressed THEN  -- whatever the reason, as Centrifugo's
        RAISE EXCEPTION '{b}_map_remove: key not found: %.%', p_channel, p_key USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY SELECT r.result_id, r.channel_offset, r.epoch;
END;
$$;
"""


# Centrifugo's arguments of {b}_map_publish / {b}_map_remove (and their _strict forms), in its order: (name,
# type, default; "" for none). p_num_shards is accepted and unused (the broker's num_shards is kept in
# {b}_map_settings); p_stream_size / p_stream_ttl are Fugato's, last.
PUBLISH_ARGS: Final = (
    ("channel", "TEXT", ""), ("key", "TEXT", ""), ("data", "{data}", ""), ("tags", "JSONB", "NULL"),
    ("key_ttl", "INTERVAL", "NULL"), ("meta_ttl", "INTERVAL", "NULL"), ("key_mode", "TEXT", "NULL"),
    ("expected_offset", "BIGINT", "NULL"), ("expected_epoch", "TEXT", "NULL"), ("key_version", "BIGINT", "NULL"),
    ("key_version_epoch", "TEXT", "NULL"), ("idempotency_key", "TEXT", "NULL"),
    ("idempotency_ttl", "INTERVAL", "NULL"), ("use_delta", "BOOLEAN", "FALSE"), ("client_id", "TEXT", "NULL"),
    ("user_id", "TEXT", "NULL"), ("conn_info", "{data}", "NULL"), ("chan_info", "{data}", "NULL"),
    ("refresh_ttl_on_suppress", "BOOLEAN", "FALSE"), ("num_shards", "INTEGER", "NULL"),
    ("stream_size", "INTEGER", "NULL"), ("stream_ttl", "INTERVAL", "NULL"))
REMOVE_ARGS: Final = (
    ("channel", "TEXT", ""), ("key", "TEXT", ""), ("meta_ttl", "INTERVAL", "NULL"),
    ("expected_offset", "BIGINT", "NULL"), ("expected_epoch", "TEXT", "NULL"), ("idempotency_key", "TEXT", "NULL"),
    ("idempotency_ttl", "INTERVAL", "NULL"), ("client_id", "TEXT", "NULL"), ("user_id", "TEXT", "NULL"),
    ("num_shards", "INTEGER", "NULL"), ("stream_size", "INTEGER", "NULL"), ("stream_ttl", "INTERVAL", "NULL"))

# What {b}_map_publish / {b}_map_remove answer (Centrifugo's columns) from {b}_map_apply's row ``a``.
RESULT: Final = """RETURNS TABLE (result_id BIGINT, channel_offset BIGINT, epoch TEXT, suppressed BOOLEAN,
               suppress_reason TEXT, current_data {data}, current_offset BIGINT)
LANGUAGE sql AS $$
    SELECT a.result_id, a.channel_offset, a.epoch, a.suppressed, nullif(a.suppress_reason, ''),
           {from_bytes}, a.current_offset
    FROM"""


def _declare(args: tuple[tuple[str, str, str], ...], data: str) -> str:
    declared = (f"p_{name} {kind.format(data=data)}" + (f" DEFAULT {default}" if default else "")
                for name, kind, default in args)
    return ",\n    ".join(declared)  # one a line


def _call(args: tuple[tuple[str, str, str], ...]) -> str:
    return textwrap.fill(", ".join(f"p_{name}" for name, _, _ in args), width=100, subsequent_indent="        ")


def schema(base: str, *, binary: bool, num_shards: int, use_notify: bool) -> str:
    """The DDL for tables and functions named ``{base}_map_*`` (``base`` is a checked SQL identifier)."""
    def to_bytes(arg: str) -> str:
        return arg if binary else f"convert_to({arg}::TEXT, 'UTF8')"

    data = "BYTEA" if binary else "JSONB"
    result = RESULT.format(data=data, from_bytes="a.current_data" if binary else
                           "convert_from(a.current_data, 'UTF8')::JSONB")
    return SCHEMA.format(b=base, num_shards=int(num_shards), use_notify="TRUE" if use_notify else "FALSE",
                         data=data, to_bytes=to_bytes("p_data"), conn_bytes=to_bytes("p_conn_info"),
                         chan_bytes=to_bytes("p_chan_info"), result=result,
                         publish_args=_declare(PUBLISH_ARGS, data), remove_args=_declare(REMOVE_ARGS, data),
                         publish_call=_call(PUBLISH_ARGS), remove_call=_call(REMOVE_ARGS))
