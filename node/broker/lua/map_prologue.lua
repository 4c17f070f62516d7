-- Map channels (node/maps/): publish.lua runs between this prologue and map_epilogue.lua, so a key's state
-- changes in the same atomic step as its stream entry. Keys and arguments are publish.lua's, then:
-- KEYS: 4 values (hash: key -> msgpack(offset) .. body), 5 keys (sorted set, all scores 0: lexical order for
--       paging), 6 expiry (sorted set: key -> unix ms)
-- ARGV: 10 "set" | "remove" | "expire" (remove only if expired by ARGV 13), 11 key, 12 expire at (unix ms,
--       0 = never), 13 now (unix ms).
-- A remove of a key that is not there (or an expire of one that is not expired) changes and announces nothing.
if ARGV[10] ~= 'set' then
  if redis.call('hexists', KEYS[4], ARGV[11]) == 0 then
    return {0, '', 1}
  end
  if ARGV[10] == 'expire' then
    local at = redis.call('zscore', KEYS[6], ARGV[11])
    if not at or tonumber(at) > tonumber(ARGV[13]) then
      return {0, '', 1}
    end
  end
end
