-- Drop entries that were not refreshed in time, then return the rest.
-- KEYS: 1 expiry zset, 2 data hash. ARGV: 1 now (unix s). Returns HGETALL of the data hash.
local expired = redis.call('zrangebyscore', KEYS[1], '0', ARGV[1])
if #expired > 0 then
  for i = 1, #expired, 1000 do
    redis.call('hdel', KEYS[2], unpack(expired, i, math.min(i + 999, #expired)))
  end
  redis.call('zremrangebyscore', KEYS[1], '0', ARGV[1])
end
return redis.call('hgetall', KEYS[2])
