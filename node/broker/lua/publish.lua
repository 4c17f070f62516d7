-- Append a publication to the channel's history stream and publish it, atomically (one slot: every key and
-- the PUB/SUB channel share the channel's hash tag).
-- KEYS: 1 stream, 2 stream meta, 3 idempotency result
-- ARGV: 1 PUB/SUB channel, 2 history size (0 = no history), 3 history ttl (s), 4 meta ttl (s, 0 = none),
--       5 epoch to use if the stream is new, 6 "publish" | "spublish", 7 idempotency result ttl (s, 0 = no
--       idempotency), 8 "1" to attach the previous entry (delta), 9 body (msgpack). (The node encodes the
--       channel's keys with ARGV 1 once, and the options 2-8 once per burst: the order keeps them together.)
-- Returns {offset, epoch, suppressed (0|1)}.
local result_ttl = tonumber(ARGV[7])
if result_ttl > 0 then
  local cached = redis.call('hmget', KEYS[3], 'e', 's')
  if cached[2] then
    return {tonumber(cached[2]), cached[1], 1}
  end
end
local top = 0
local epoch = ''
local prev_offset = nil
local prev_body = nil
-- (map_publish.lua: map_prologue.lua runs here, after the idempotency check, and may set prev_offset/prev_body.)
if tonumber(ARGV[2]) > 0 then
  epoch = redis.call('hget', KEYS[2], 'e')
  if not epoch then
    epoch = ARGV[5]
    redis.call('hset', KEYS[2], 'e', epoch)
  end
  top = redis.call('hincrby', KEYS[2], 's', 1)
  local meta_ttl = tonumber(ARGV[4])
  if meta_ttl > 0 then
    redis.call('expire', KEYS[2], meta_ttl)
  end
  if top == 1 then
    redis.call('del', KEYS[1])
  elseif ARGV[8] == '1' then
    local last = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', 1)
    if last[1] then
      prev_offset = tonumber(string.match(last[1][1], '^(%d+)-'))
      prev_body = last[1][2][2]
    end
  end
  redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], top .. '-0', 'd', ARGV[9])
  redis.call('expire', KEYS[1], ARGV[3])
end
local message = cmsgpack.pack(1, 0, top, epoch) .. ARGV[9]
if prev_body then
  message = message .. cmsgpack.pack(prev_offset) .. prev_body
end
redis.call(ARGV[6], ARGV[1], message)
if result_ttl > 0 then
  redis.call('hset', KEYS[3], 'e', epoch, 's', top)
  redis.call('expire', KEYS[3], result_ttl)
end
return {top, epoch, 0}
