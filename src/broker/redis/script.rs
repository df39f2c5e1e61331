//! The Lua scripts wsgate runs in Redis. Each is one atomic step, so a publication's offset,
//! its place in the history list and its pub/sub message never disagree, whoever publishes at
//! the same time on other nodes. Times come from Redis' own clock (`TIME`), so nodes with
//! skewed clocks still agree on what expired.

/// Publishes one message to a group that keeps history.
///
/// KEYS: history list, meta hash. ARGV: channel, size, ttl ms, meta ttl ms, epoch for a new
/// stream, kind/origin/sender head (`wire::tail_head`), data, publish command (`PUBLISH` or
/// `SPUBLISH`). Returns `{epoch, offset}`.
///
/// A stream without meta (new, or its position expired or was evicted) starts over with the
/// given epoch and drops whatever list is left, so old offsets can never pass as the new
/// epoch's.
pub const PUBLISH: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
redis.call('RPUSH', KEYS[1], offset .. ':' .. now .. ':' .. string.sub(ARGV[6], 1, 1) .. ':' .. ARGV[7])
local size = tonumber(ARGV[2])
local n = redis.call('LLEN', KEYS[1])
if n > size then
  redis.call('LTRIM', KEYS[1], n - size, -1)
end
local oldest = now - tonumber(ARGV[3])
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then break end
  local at = tonumber(string.match(head, '^%d+:(%d+):'))
  if at >= oldest then break end
  redis.call('LPOP', KEYS[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]))
redis.call(ARGV[8], ARGV[1], epoch .. ':' .. offset .. ':' .. ARGV[6] .. ARGV[7])
return {epoch, offset}
"#;

/// Reads a group's stream.
///
/// KEYS: history list, meta hash. ARGV: after (entries with a greater offset), tail (at most
/// this many of the newest; 0 for no bound), epoch for a new stream, meta ttl ms. Returns
/// `{epoch, last offset, now ms, entries}`.
///
/// A group without a stream gets one here (at offset 0), as in the memory broker: a client that
/// joins before the first publication already has a position to recover from.
pub const READ: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local m = redis.call('HMGET', KEYS[2], 'e', 'o')
if not m[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', ARGV[3], 'o', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return {ARGV[3], 0, now, {}}
end
local top = tonumber(m[2])
local n = redis.call('LLEN', KEYS[1])
local first = top + 1
if n > 0 then
  first = tonumber(string.match(redis.call('LINDEX', KEYS[1], 0), '^(%d+):'))
end
local start = math.max(0, tonumber(ARGV[1]) - first + 1)
local tail = tonumber(ARGV[2])
if tail > 0 then
  start = math.max(start, n - tail)
end
local items = {}
if start < n then
  items = redis.call('LRANGE', KEYS[1], start, -1)
end
return {m[1], top, now, items}
"#;

/// Adds or refreshes one presence entry. KEYS: presence hash, expiry sorted set. ARGV: field,
/// entry, ttl ms.
pub const PRESENCE_ADD: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"#;

/// Removes one presence entry. KEYS: presence hash, expiry sorted set. ARGV: field.
pub const PRESENCE_REMOVE: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"#;

/// Drops expired presence entries (their node stopped refreshing them) and returns the rest as
/// a flat field/entry list. KEYS: presence hash, expiry sorted set.
pub const PRESENCE_LIST: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, f in ipairs(gone) do
  redis.call('HDEL', KEYS[1], f)
end
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
return redis.call('HGETALL', KEYS[1])
"#;
