-- Prolong a map key's TTL without changing it (map presence refreshes: no stream entry, nothing announced).
-- KEYS: 1 values (hash of the channel's keys), 2 expiry (sorted set: key -> unix ms)
-- ARGV: 1 key, 2 expire at (unix ms, 0 = never)
-- Returns 1 if the key is there (and was prolonged), 0 if not (the caller publishes it).
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('zadd', KEYS[2], ARGV[2], ARGV[1])
end
return 1
