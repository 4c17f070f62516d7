-- KEYS: 1 expiry zset, 2 data hash. ARGV: 1 ttl (s), 2 expires at (unix s), 3 client id, 4 info (msgpack)
redis.call('zadd', KEYS[1], ARGV[2], ARGV[3])
redis.call('hset', KEYS[2], ARGV[3], ARGV[4])
redis.call('expire', KEYS[1], ARGV[1])
redis.call('expire', KEYS[2], ARGV[1])
return 1
