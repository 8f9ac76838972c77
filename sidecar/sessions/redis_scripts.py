"""Key names and Lua scripts of the Redis session backend (sidecar/sessions/redis.py).

Each script is one atomic step of the claim protocol; the comments say what
goes in (KEYS, ARGV) and what comes out.
"""

from __future__ import annotations

import re

from sidecar.rediskeys import session_tag

# KEYS: owner, fence. ARGV: value, lease_ms, policy, channel, fence_ttl_ms, route,
# key, binding. Returns {token, old value or nil}; token 0 means refused (reject
# and taken), -1 (FORBIDDEN_TOKEN) refused because the owner's value is bound to
# other credentials than ``binding`` (see owner_value): compared here, so two
# replicas cannot both pass a check made before the script. An owner value
# bound to nothing (bind: [], or written before values carried a binding) may
# be replaced by anyone (sessions/base.py, may_end).
# Finding its own value means a retry after a lost reply: answer as the first run did.
CLAIM = """
local old = redis.call('GET', KEYS[1])
if old == ARGV[1] then return {tonumber(redis.call('GET', KEYS[2]) or '0'), false} end
if old and ARGV[3] == 'reject' then return {0, old} end
if old then
  local bound = string.match(old, '/(%x+)$')
  if bound and bound ~= ARGV[8] then return {-1, old} end
end
local token = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if old then
  redis.call('PUBLISH', ARGV[4],
    cjson.encode({op = 'replace', route = ARGV[6], key = ARGV[7], value = old}))
end
return {token, old}
"""

# KEYS: owner, fence, stop mark. ARGV: value, lease_ms, token, fence_ttl_ms.
# 1: renewed. 0: another owner, or a newer token was drawn (ownership lost).
# 2: the key was gone (expired while Redis was unreachable, or Redis lost its
# data) and nobody claimed since, so it is ours again. 3: a stop request
# marked this value (see STOP): not renewed, the mark is spent, the stream ends.
RENEW = """
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
  return 3
end
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return 1
end
if cur then return 0 end
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
if fence > tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if fence < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
else
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return 2
"""

# KEYS: owner, stop mark. ARGV: value, channel, message. Deletes only our own
# value (and a stop mark for it: its stream has ended); if the session was
# taken over, tells the new owner (waiting in claim) we are done.
RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 0
"""

# KEYS: owner, stop mark. ARGV: value, mark_ttl_ms, channel, message.
# A stop request for the owner that held ``value`` when it was read: 0 if the
# key holds another value now (or none). Else 1: the stop message goes out on
# the replace channel (the fast path), and the mark stays for the holder's
# next renewal (RENEW returns 3), which ends the stream even if the message
# reached nobody: pub/sub keeps no copy for a subscription that is down. The
# mark names the value, so a newer owner of the session is never stopped by
# it, and it lives about one lease: a holder that does not renew within that
# has lost its claim anyway.
STOP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

#: CLAIM's token for a replace refused: the owner is bound to other credentials.
FORBIDDEN_TOKEN = -1

#: A fence counter outlives every claim drawn from it by a day.
FENCE_TTL = 86400.0


def fence_ttl(lease: float) -> float:
    """How long a session's fence counter is kept past its last claim or renewal."""
    return max(FENCE_TTL, 10 * lease)


def owner_value(owner_id: str, seq: int, binding: str) -> str:
    """What a claim writes into the owner key: unique, and the owner's credentials.

    ``{owner_id}:{seq}``, then ``/{binding}`` (a hex digest) when the claim is
    bound: CLAIM reads the binding back from the value, so the lease, renewal,
    release and stop, which compare whole values, need nothing new, and a
    replica of a version that did not write one reads the value as before.
    """
    return f"{owner_id}:{seq}/{binding}" if binding else f"{owner_id}:{seq}"


_BINDING = re.compile(r"/([0-9A-Fa-f]+)$")


def bound_to(value: str) -> str:
    """The binding an owner value carries ("" for none), read as CLAIM reads it ('/(%x+)$')."""
    match = _BINDING.search(value)
    return match[1] if match else ""


def owner_key(prefix: str, route: str, key: str) -> str:
    return f"{prefix}session:{session_tag(route, key)}"


def fence_key(prefix: str, route: str, key: str) -> str:
    return f"{prefix}fence:{session_tag(route, key)}"


def stop_key(prefix: str, route: str, key: str) -> str:
    """The stop mark: the value of the owner a stop request is for (see STOP)."""
    return f"{prefix}stop:{session_tag(route, key)}"
