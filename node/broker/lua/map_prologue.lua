-- Map channels (node/maps/): map_publish.lua is publish.lua with this prologue spliced in after its idempotency
-- check (a retried write answers "suppressed" before anything else) and map_epilogue.lua in place of its final
-- return, so a key's state changes in the same atomic step as its stream entry. Keys and arguments are
-- publish.lua's, then:
-- KEYS: 4 values (hash: key -> msgpack(offset) .. body), 5 keys (sorted set, all scores 0: lexical order for
--       paging), 6 expiry (sorted set: key -> unix ms), 7 versions (hash: key -> msgpack(version, version epoch))
-- ARGV: 10 "set" | "remove" | "expire" (remove only if expired by ARGV 13), 11 key, 12 expire at (unix ms,
--       0 = never), 13 now (unix ms), 14 "1" to attach the key's previous value (its fossil delta base),
--       15 key mode ("", "if_new", "if_exists"), 16 version (0 = none), 17 version epoch.
-- A write that changes nothing returns the stream's position and Centrifugo's suppress reason, announcing nothing.
-- On a channel never written to, a refused set starts the stream's meta (a new epoch at offset 0, as Centrifugo's
-- brokers do); a refused removal leaves it absent and answers offset 0 with no epoch (as Centrifugo's memory and
-- PostgreSQL brokers do).
local function unchanged(reason)
  local meta = redis.call('hmget', KEYS[2], 's', 'e')
  if not meta[2] and ARGV[10] == 'set' then
    meta[2] = ARGV[5]
    redis.call('hset', KEYS[2], 'e', meta[2])
    if tonumber(ARGV[4]) > 0 then
      redis.call('expire', KEYS[2], tonumber(ARGV[4]))
    end
  end
  return {tonumber(meta[1]) or 0, meta[2] or '', reason}
end
local exists = redis.call('hexists', KEYS[4], ARGV[11]) == 1
if ARGV[10] ~= 'set' then
  if not exists then
    return unchanged('key_not_found')
  end
  if ARGV[10] == 'expire' then
    local at = redis.call('zscore', KEYS[6], ARGV[11])
    if not at or tonumber(at) > tonumber(ARGV[13]) then
      return unchanged('key_not_found')
    end
  end
else
  local version = tonumber(ARGV[16])
  if version > 0 and exists then
    local stored = redis.call('hget', KEYS[7], ARGV[11])
    if stored then
      local stored_version, stored_epoch = cmsgpack.unpack(stored)
      if (ARGV[17] == '' or ARGV[17] == stored_epoch) and version <= stored_version then
        return unchanged('version')
      end
    end
  end
  if ARGV[15] == 'if_new' and exists then
    return unchanged('key_exists')
  end
  if ARGV[15] == 'if_exists' and not exists then
    return unchanged('key_not_found')
  end
  if ARGV[14] == '1' and exists then
    local value = redis.call('hget', KEYS[4], ARGV[11])
    local body_at, offset = cmsgpack.unpack_one(value)
    prev_offset, prev_body = offset, string.sub(value, body_at + 1)
  end
end
