"""The lookup table's server-side Lua scripts, built from the key scheme of ``strata.keyspace``.

A script names keys and metadata fields through placeholders that are expanded once, at import,
from the same :class:`~strata.keyspace.KeySpace` methods and field names the Python side uses:
``${meta(ver)}`` becomes the Lua expression ``p .. ':ver:' .. ver`` (the prefix is always the
script's variable ``p``, passed in ``ARGV[1]``), ``${buckets_field('d')}`` the literal
``'buckets:d'`` and ``${STATE}`` the literal ``'state'``. The expanded text is what Redis runs
(and knows by its SHA1), so a key name exists in one place only.

Usage:
    >>> lua("local k = ${bucket(ver, code, b)}")
    "local k = p .. ':' .. ver .. ':' .. code .. ':' .. b"
    >>> lua("redis.call('HGET', ${meta(ver)}, ${STATE}, ${experiment_field('e')})")
    "redis.call('HGET', p .. ':ver:' .. ver, 'state', 'x:e')"
"""

from __future__ import annotations

import re
from collections.abc import Callable

from strata import keyspace as k

#: The marker the prefix and each argument stand for while a key name is computed.
_MARK = re.compile(r"\x00(\d+)\x00")
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_LITERAL = re.compile(r"^'[^'\\]*'$")


def _quote(text: str) -> str:
    """A Lua single-quoted string literal."""
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n").replace("'", "\\'")
    return f"'{escaped}'"


def _concat(build: Callable[..., str], args: list[str]) -> str:
    """``build(prefix, *args)`` as a Lua concatenation of the prefix ``p`` and ``args`` (Lua
    expressions). Arguments that are string literals are folded into the text around them."""
    exprs = ["p", *args]
    text = build(*(f"\x00{i}\x00" for i in range(len(exprs))))
    pieces: list[tuple[bool, str]] = []  # (is literal text, text or Lua expression)
    pos = 0
    for m in _MARK.finditer(text):
        pieces.append((True, text[pos : m.start()]))
        expr = exprs[int(m.group(1))]
        pieces.append((True, expr[1:-1]) if _LITERAL.match(expr) else (False, expr))
        pos = m.end()
    pieces.append((True, text[pos:]))
    out: list[str] = []
    literal = ""
    for is_literal, piece in pieces:
        if is_literal:
            literal += piece
            continue
        if literal:
            out.append(_quote(literal))
            literal = ""
        out.append(piece)
    if literal:
        out.append(_quote(literal))
    return " .. ".join(out)


#: ``${name(args)}``: a key or metadata field, computed by the key scheme's own functions.
_NAMES: dict[str, Callable[..., str]] = {
    "live": lambda p: k.KeySpace(p).live,
    "tombstones": lambda p: k.KeySpace(p).tombstones,
    "tombstone_log": lambda p: k.KeySpace(p).tombstone_log,
    "tombstone_seq": lambda p: k.KeySpace(p).tombstone_seq,
    "meta": lambda p, ver: k.KeySpace(p).meta(ver),
    "catalog": lambda p, ver: k.KeySpace(p).catalog(ver),
    "bucket": lambda p, ver, code, n: k.KeySpace(p).bucket_key(ver, code, n),
    "buckets_field": lambda _p, code: k.buckets_field(code),
    "experiment_field": lambda _p, exp: k.experiment_field(exp),
    "tombstone_field": lambda _p, code, exp, uid: k.tombstone_code_field(code, exp, uid),
}
#: ``${NAME}``: a constant of the key scheme, as a Lua string literal.
_CONSTANTS = {
    name: getattr(k, name)
    for name in (
        *("STATE", "LIVE_AT", "RETIRED_AT", "VERIFIED", "LIVE", "RETIRED"),
        *("TOMBSTONE_FIELD_LUA_PATTERN", "TOMBSTONE_EXPERIMENT_LUA_PATTERN"),
    )
}


def _split_args(text: str) -> list[str]:
    """Comma-separated Lua expressions (commas inside parentheses or quotes do not split)."""
    args, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(text):
        if quote:
            quote = "" if c == quote and text[i - 1] != "\\" else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    if text.strip():
        args.append(text[start:].strip())
    return args


def _expand(match: re.Match[str]) -> str:
    body = match.group(1).strip()
    if body in _CONSTANTS:
        return _quote(_CONSTANTS[body])
    name, paren, rest = body.partition("(")
    if name not in _NAMES or (paren and not rest.endswith(")")):
        raise ValueError(f"unknown placeholder ${{{body}}}")
    return _concat(_NAMES[name], _split_args(rest[:-1]) if paren else [])


def lua(template: str) -> str:
    """A script with its ``${...}`` placeholders expanded (see the module doc)."""
    return _PLACEHOLDER.sub(_expand, template)


# --------------------------------------------------------------------------------------------
# The reader's script
# --------------------------------------------------------------------------------------------

#: ARGV: prefix, cached version, then (code, crc32, unit id) triples.
#: Returns {version, catalog-or-false, value...}; {false} when nothing is published, and
#: {false, version} when the live pointer names a version whose keys are gone.
READ_LUA = lua("""
local p = ARGV[1]
local ver = redis.call('GET', ${live})
if not ver then return {false} end
local meta = ${meta(ver)}
local nb = {}
local counts = redis.call('HMGET', meta, ${buckets_field('d')}, ${buckets_field('u')}, ${buckets_field('l')})
if not counts[1] and not counts[2] and not counts[3] then return {false, ver} end
nb['d'], nb['u'], nb['l'] = tonumber(counts[1]), tonumber(counts[2]), tonumber(counts[3])
local out = {ver, false}
if ver ~= ARGV[2] then out[2] = redis.call('HGETALL', ${catalog(ver)}) end
for i = 3, #ARGV, 3 do
  local n = nb[ARGV[i]]
  local v = false
  if n and n > 0 then
    local b = string.format('%d', tonumber(ARGV[i + 1]) % n)
    v = redis.call('HGET', ${bucket(ver, ARGV[i], b)}, ARGV[i + 2])
  end
  out[#out + 1] = v
end
return out
""")  # noqa: E501

# --------------------------------------------------------------------------------------------
# The loader's scripts: flip (with fast-path removals re-applied) and the fast path itself
# --------------------------------------------------------------------------------------------

#: Lua helper: drop the token of experiment index ``e`` from a unit's "e.v,e.v" value.
REMOVE_TOKEN_LUA = lua("""
local function remove_token(value, e)
  local kept, removed = {}, false
  for tok in string.gmatch(value, '[^,]+') do
    if string.match(tok, '^(%d+)%.') == e then removed = true else kept[#kept + 1] = tok end
  end
  return table.concat(kept, ','), removed
end
local function remove_unit(p, ver, meta, code, exp, uid, h)
  local e = redis.call('HGET', meta, ${experiment_field(exp)})
  local nb = tonumber(redis.call('HGET', meta, ${buckets_field(code)}))
  if not e or not nb then return -1 end
  local key = ${bucket(ver, code, string.format('%d', h % nb))}
  local cur = redis.call('HGET', key, uid)
  if not cur then return 0 end
  local new, removed = remove_token(cur, e)
  if not removed then return 0 end
  if new == '' then redis.call('HDEL', key, uid) else redis.call('HSET', key, uid, new) end
  return 1
end
""")

#: ARGV: bucket key prefix, first bucket, end bucket. Sum of HLEN over the buckets (verification:
#: one script per COUNT_BUCKETS_PER_CALL buckets instead of one HLEN round trip each).
COUNT_LUA = """
local p, total = ARGV[1], 0
for b = tonumber(ARGV[2]), tonumber(ARGV[3]) - 1 do
  total = total + redis.call('HLEN', p .. b)
end
return total
"""

#: ARGV: prefix, version, then (tombstone field, value) pairs. Applies fast-path removals to a
#: verified version before its flip; returns {applied, fields whose experiment it does not hold}.
APPLY_TOMBSTONES_LUA = REMOVE_TOKEN_LUA + lua("""
local p, ver = ARGV[1], ARGV[2]
local meta = ${meta(ver)}
if redis.call('HGET', meta, ${STATE}) ~= ${VERIFIED} then
  return redis.error_reply('version ' .. ver .. ' is not verified')
end
local applied, unknown, index, nb = 0, {}, {}, {}
for i = 3, #ARGV, 2 do
  local code, exp, uid = string.match(ARGV[i], ${TOMBSTONE_FIELD_LUA_PATTERN})
  local h = tonumber(string.match(ARGV[i + 1], ':(%d+)$'))
  if index[exp] == nil then index[exp] = redis.call('HGET', meta, ${experiment_field(exp)}) end
  if nb[code] == nil then nb[code] = tonumber(redis.call('HGET', meta, ${buckets_field(code)})) end
  local e, n = index[exp], nb[code]
  if not e or not n then
    unknown[#unknown + 1] = ARGV[i]
  else
    local key = ${bucket(ver, code, string.format('%d', h % n))}
    local cur = redis.call('HGET', key, uid)
    if cur then
      local new, removed = remove_token(cur, e)
      if removed then
        if new == '' then redis.call('HDEL', key, uid) else redis.call('HSET', key, uid, new) end
        applied = applied + 1
      end
    end
  end
end
return {applied, unknown}
""")  # fmt: skip

#: ARGV: prefix, version, now_ms, tombstone sequence number the pre-flip pass started from.
#: Atomically: apply the removals recorded since then (normally none: bounded by the
#: invalidations of the last seconds, never by history), set the pointer, mark the states.
FLIP_LUA = REMOVE_TOKEN_LUA + lua("""
local p, ver, now, since = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local meta = ${meta(ver)}
local state = redis.call('HGET', meta, ${STATE})
if state ~= ${VERIFIED} then
  return redis.error_reply('version ' .. ver .. ' is ' .. tostring(state) .. ', not verified')
end
local applied = 0
local late = redis.call('ZRANGEBYSCORE', ${tombstone_log}, '(' .. since, '+inf')
for _, f in ipairs(late) do
  local value = redis.call('HGET', ${tombstones}, f)
  if value then
    local code, exp, uid = string.match(f, ${TOMBSTONE_FIELD_LUA_PATTERN})
    local h = tonumber(string.match(value, ':(%d+)$'))
    if remove_unit(p, ver, meta, code, exp, uid, h) == 1 then applied = applied + 1 end
  end
end
local prev = redis.call('GET', ${live})
redis.call('SET', ${live}, ver)
redis.call('HSET', meta, ${STATE}, ${LIVE}, ${LIVE_AT}, now)
if prev and prev ~= ver then
  redis.call('HSET', ${meta(prev)}, ${STATE}, ${RETIRED}, ${RETIRED_AT}, now)
end
return {prev or '', applied}
""")  # fmt: skip

#: ARGV: prefix, version, fields. After the flip: drop tombstones of experiments the live version
#: does not publish (checked again: nothing changes unless ``version`` is still live).
DROP_TOMBSTONES_LUA = lua("""
local p, ver = ARGV[1], ARGV[2]
if redis.call('GET', ${live}) ~= ver then return 0 end
local meta, dropped = ${meta(ver)}, 0
for i = 3, #ARGV do
  local exp = string.match(ARGV[i], ${TOMBSTONE_EXPERIMENT_LUA_PATTERN})
  if exp and redis.call('HEXISTS', meta, ${experiment_field(exp)}) == 0 then
    dropped = dropped + redis.call('HDEL', ${tombstones}, ARGV[i])
    redis.call('ZREM', ${tombstone_log}, ARGV[i])
  end
end
return dropped
""")

#: ARGV: prefix, code, experiment id, unit id, crc32, now_ms. Removes now and records a tombstone
#: (and its sequence number in ``tomb:log``, so a flip can find the removals made after its
#: pre-flip pass without reading them all). A tombstone's value is "<now_ms>:<crc32>".
INVALIDATE_LUA = REMOVE_TOKEN_LUA + lua("""
local p, code, exp, uid, h, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local field = ${tombstone_field(code, exp, uid)}
redis.call('HSET', ${tombstones}, field, now .. ':' .. ARGV[5])
redis.call('ZADD', ${tombstone_log}, redis.call('INCR', ${tombstone_seq}), field)
local ver = redis.call('GET', ${live})
if not ver then return 0 end
local r = remove_unit(p, ver, ${meta(ver)}, code, exp, uid, h)
if r == 1 then return 1 end
return 0
""")  # fmt: skip
