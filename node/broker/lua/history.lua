-- Read a channel's stream position and, optionally, publications.
-- KEYS: 1 stream, 2 stream meta
-- ARGV: 1 "1" to include publications, 2 since offset ("" = from the start / the top), 3 limit (-1 = all),
--       4 "1" for newest first, 5 meta ttl (s, 0 = none), 6 epoch to use if the stream is new
-- Returns {top offset, epoch, entries}; reading an unknown stream creates it (a stable epoch, offset 0).
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('hset', KEYS[2], 'e', epoch)
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
local meta_ttl = tonumber(ARGV[5])
if meta_ttl > 0 then
  redis.call('expire', KEYS[2], meta_ttl)
end
if ARGV[1] ~= '1' then
  return {top, epoch, {}}
end
local limit = tonumber(ARGV[3])
-- Oldest first: XRANGE from the start (or just after "since") to the end; newest first: XREVRANGE from the end
-- down to just before "since", where nothing lies before offset 1.
local cmd, from, to = 'xrange', '-', '+'
if ARGV[4] == '1' then
  cmd, from, to = 'xrevrange', '+', '-'
end
if ARGV[2] ~= '' then
  if ARGV[4] == '1' and tonumber(ARGV[2]) <= 1 then
    return {top, epoch, {}}
  end
  from = '(' .. ARGV[2] .. '-0'
end
local entries
if limit >= 0 then
  entries = redis.call(cmd, KEYS[1], from, to, 'COUNT', limit)
else
  entries = redis.call(cmd, KEYS[1], from, to)
end
return {top, epoch, entries}
