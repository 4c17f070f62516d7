if ARGV[10] == 'set' then
  redis.call('hset', KEYS[4], ARGV[11], cmsgpack.pack(top) .. ARGV[9])
  redis.call('zadd', KEYS[5], 0, ARGV[11])
  if tonumber(ARGV[12]) > 0 then
    redis.call('zadd', KEYS[6], ARGV[12], ARGV[11])
  else
    redis.call('zrem', KEYS[6], ARGV[11])
  end
  -- An unversioned publish keeps the key's stored version.
  if tonumber(ARGV[16]) > 0 then
    redis.call('hset', KEYS[7], ARGV[11], cmsgpack.pack(tonumber(ARGV[16]), ARGV[17]))
  end
else
  redis.call('hdel', KEYS[4], ARGV[11])
  redis.call('zrem', KEYS[5], ARGV[11])
  redis.call('zrem', KEYS[6], ARGV[11])
  redis.call('hdel', KEYS[7], ARGV[11])
end
return {top, epoch, 0}
