//! The Lua scripts: each runs atomically on the keys of one partition.

/// Takes partition `KEYS[1]` (lease) if free: `ARGV` = token, ttl ms.
/// KEYS: lease, epoch. Returns the new epoch, or 0 when someone holds it.
pub const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
";

/// Keeps the lease. KEYS: lease, epoch. ARGV: token, ttl ms, the epoch the worker holds.
/// Returns 1 when the lease is still the worker's (or was free and nobody took it in
/// between, so the worker takes it back), 0 when somebody else holds or held it.
pub const RENEW: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
if epoch ~= tonumber(ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Gives the lease up. KEYS: lease. ARGV: token.
pub const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Stores requests of the worker's own partition, if it still holds the lease; otherwise
/// they go to the partition's inbox, for whoever holds it. KEYS: requests, lease, inbox.
/// ARGV: token, then id, JSON pairs. Returns 1 (stored) or 0 (sent to the inbox).
pub const PUT: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  for i = 2, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  return 1
end
for i = 3, #ARGV, 2 do
  redis.call('RPUSH', KEYS[3], ARGV[i])
end
return 0
";

/// Moves up to `ARGV[2]` requests from the inbox into the requests hash, under new ids.
/// KEYS: lease, inbox, requests, seq. ARGV: token, count.
/// Returns `{1, id, JSON, id, JSON, ...}`, or `{0}` when the worker lost the lease.
///
/// An item leaves the inbox only once it is stored, so that a refused `INCR` or `HSET`
/// (foreign data in the counter or the hash) takes nothing; and, out of memory, Redis
/// refuses the script at its first write (`INCR`, which may grow memory), before anything
/// was taken, rather than let it grow the hash past `maxmemory`.
pub const CLAIM: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end
local out = {1}
for i = 1, tonumber(ARGV[2]) do
  local item = redis.call('LINDEX', KEYS[2], 0)
  if not item then
    break
  end
  local id = 'i' .. redis.call('INCR', KEYS[4])
  redis.call('HSET', KEYS[3], id, item)
  redis.call('LPOP', KEYS[2])
  out[#out + 1] = id
  out[#out + 1] = item
end
return out
";

/// Moves an unreadable entry aside. KEYS: requests, rejected. ARGV: id, text.
pub const REJECT: &str = r"
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return redis.call('HDEL', KEYS[1], ARGV[1])
";
