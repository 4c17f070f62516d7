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
* ``{b}_map_apply``: one change (set, remove, expire-if-expired, or a plain stream append) in one transaction;
  ``{b}_map_publish`` / ``{b}_map_remove`` are its forms for applications' own SQL transactions.

Data is kept as BYTEA whatever ``binary_data`` says, so a payload comes back byte for byte as it was given."""

from __future__ import annotations

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

-- The form without versions and idempotency keys is replaced by the one with them.
DROP FUNCTION IF EXISTS {b}_map_apply(TEXT, TEXT, TEXT, BYTEA, TEXT, INTERVAL, INTERVAL, INTEGER, INTERVAL, BYTEA,
                                      JSONB);
CREATE OR REPLACE FUNCTION {b}_map_apply(
    p_op TEXT, p_channel TEXT, p_key TEXT, p_data BYTEA, p_key_mode TEXT, p_key_ttl INTERVAL,
    p_meta_ttl INTERVAL, p_stream_size INTEGER, p_stream_ttl INTERVAL, p_info BYTEA, p_tags JSONB,
    p_version BIGINT DEFAULT 0, p_version_epoch TEXT DEFAULT '', p_idempotency_key TEXT DEFAULT NULL,
    p_result_ttl INTERVAL DEFAULT NULL, p_use_delta BOOLEAN DEFAULT FALSE)
RETURNS TABLE (channel_offset BIGINT, epoch TEXT, suppressed BOOLEAN, suppress_reason TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch TEXT;
    v_top BIGINT;
    v_meta_expires TIMESTAMPTZ;
    v_key_expires TIMESTAMPTZ;
    v_found BOOLEAN;
    v_version BIGINT;
    v_version_epoch TEXT;
    v_prev_data BYTEA;
    v_prev_tags JSONB;
    v_shard INTEGER;
    v_seq BIGINT;
    v_settings {b}_map_settings%ROWTYPE;
BEGIN
    INSERT INTO {b}_map_meta AS m (channel, epoch, expires_at)
        VALUES (p_channel, {b}_map_epoch(), now() + coalesce(p_meta_ttl, interval '720 hours'))
        ON CONFLICT (channel) DO NOTHING;
    SELECT m.epoch, m.top, m.expires_at INTO v_epoch, v_top, v_meta_expires
        FROM {b}_map_meta m WHERE m.channel = p_channel FOR UPDATE;
    IF v_meta_expires <= now() THEN  -- the stream's meta expired: a new epoch starts from offset 0
        v_epoch := {b}_map_epoch();
        v_top := 0;
    END IF;
    IF p_idempotency_key IS NOT NULL THEN  -- a write seen before: its first result, nothing changed
        RETURN QUERY SELECT r.channel_offset, r.epoch, TRUE, 'idempotency'::TEXT FROM {b}_map_result r
            WHERE r.channel = p_channel AND r.idempotency_key = p_idempotency_key AND r.expires_at > now();
        IF FOUND THEN RETURN; END IF;
    END IF;
    IF p_op <> 'append' THEN
        SELECT TRUE, s.expires_at, s.version, s.version_epoch, s.data, s.tags
            INTO v_found, v_key_expires, v_version, v_version_epoch, v_prev_data, v_prev_tags
            FROM {b}_map_state s WHERE s.channel = p_channel AND s.key = p_key FOR UPDATE;
        v_found := coalesce(v_found, FALSE) AND (v_key_expires IS NULL OR v_key_expires > now() OR p_op = 'expire');
        IF p_op = 'set' AND v_found AND p_version > 0 AND v_version > 0
                AND p_version_epoch IN ('', v_version_epoch) AND p_version <= v_version THEN
            RETURN QUERY SELECT v_top, v_epoch, TRUE, 'version'::TEXT; RETURN;
        ELSIF p_op = 'remove' AND NOT v_found THEN
            RETURN QUERY SELECT v_top, v_epoch, TRUE, 'key_not_found'::TEXT; RETURN;
        ELSIF p_op = 'expire' AND NOT (v_found AND v_key_expires IS NOT NULL AND v_key_expires <= now()) THEN
            RETURN QUERY SELECT v_top, v_epoch, TRUE, 'key_not_expired'::TEXT; RETURN;
        ELSIF p_op = 'set' AND p_key_mode = 'if_new' AND v_found THEN
            RETURN QUERY SELECT v_top, v_epoch, TRUE, 'key_exists'::TEXT; RETURN;
        ELSIF p_op = 'set' AND p_key_mode = 'if_exists' AND NOT v_found THEN
            RETURN QUERY SELECT v_top, v_epoch, TRUE, 'key_not_found'::TEXT; RETURN;
        END IF;
    END IF;
    v_top := v_top + 1;
    UPDATE {b}_map_meta m SET removed_to = CASE WHEN m.epoch = v_epoch THEN m.removed_to ELSE 0 END,
        epoch = v_epoch, top = v_top,
        expires_at = now() + coalesce(p_meta_ttl, interval '720 hours'),
        stream_size = coalesce(p_stream_size, 0),
        stream_expires_at = now() + coalesce(p_stream_ttl, interval '0')
        WHERE m.channel = p_channel;
    IF p_op = 'set' THEN
        -- An unversioned write keeps the key's version; an expired entry's counts as gone.
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
    RETURN QUERY SELECT v_top, v_epoch, FALSE, ''::TEXT;
END;
$$;

CREATE OR REPLACE FUNCTION {b}_map_publish(
    p_channel TEXT, p_key TEXT, p_data {data}, p_key_mode TEXT DEFAULT NULL, p_key_ttl INTERVAL DEFAULT NULL,
    p_meta_ttl INTERVAL DEFAULT NULL, p_stream_size INTEGER DEFAULT 100, p_stream_ttl INTERVAL DEFAULT '1 minute',
    p_tags JSONB DEFAULT NULL)
RETURNS TABLE (channel_offset BIGINT, epoch TEXT, suppressed BOOLEAN, suppress_reason TEXT)
LANGUAGE sql AS $$
    SELECT * FROM {b}_map_apply('set', p_channel, p_key, {to_bytes}, p_key_mode, p_key_ttl, p_meta_ttl,
                                p_stream_size, p_stream_ttl, NULL, p_tags)
$$;

CREATE OR REPLACE FUNCTION {b}_map_remove(
    p_channel TEXT, p_key TEXT, p_meta_ttl INTERVAL DEFAULT NULL, p_stream_size INTEGER DEFAULT 100,
    p_stream_ttl INTERVAL DEFAULT '1 minute')
RETURNS TABLE (channel_offset BIGINT, epoch TEXT, suppressed BOOLEAN, suppress_reason TEXT)
LANGUAGE sql AS $$
    SELECT * FROM {b}_map_apply('remove', p_channel, p_key, 'null'::BYTEA, NULL, NULL, p_meta_ttl,
                                p_stream_size, p_stream_ttl, NULL, NULL)
$$;
"""


def schema(base: str, *, binary: bool, num_shards: int, use_notify: bool) -> str:
    """The DDL for tables and functions named ``{base}_map_*`` (``base`` is a checked SQL identifier)."""
    return SCHEMA.format(b=base, num_shards=int(num_shards), use_notify="TRUE" if use_notify else "FALSE",
                         data="BYTEA" if binary else "JSONB",
                         to_bytes="p_data" if binary else "convert_to(p_data::TEXT, 'UTF8')")
