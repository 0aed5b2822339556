"""The shared store: one Redis database, for several service processes on several hosts.

Every mutation is one Lua script, so Redis runs it without interleaving any other client's
commands; a script checks everything before its first write, because Redis does not roll a
script back. The change log is a stream whose entry ids are the cursor other processes follow.

Layout, under PREFIX: `item:{id}` hashes; `keys` (index key -> id) and `key_counter`; `live`
(ids not deleted); `newest` and `best_sellers`, sorted sets of the items for sale (scored by
created_at and by units sold); `history:{user}` sorted sets scored by timestamp; `users`;
`purchase_count`; the `changes` stream; `picture:{id}`, a work's picture (a hash of `data`
and `type`, apart from the item so reading an item never carries it); `purchase_key:{key}`, a
purchase's idempotency key (expiring after a day).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.retry import Retry

from service.stores.base import (
    IDEMPOTENCY_SECONDS,
    Catalogue,
    ChangesLost,
    Counts,
    EditionExhaustedError,
    IndexRecords,
    Item,
    NewItem,
    NotForSaleError,
    Picture,
    Purchase,
    Sale,
    Store,
    UnknownItemsError,
    UpsertResult,
    as_blob,
    as_vector,
    cursor_position,
    feature_count,
    features_blobs,
    features_vector,
    replay,
)

PREFIX = "curatornet:"
KEYS = f"{PREFIX}keys"
KEY_COUNTER = f"{PREFIX}key_counter"
LIVE = f"{PREFIX}live"
NEWEST = f"{PREFIX}newest"
BEST_SELLERS = f"{PREFIX}best_sellers"
USERS = f"{PREFIX}users"
PURCHASE_COUNT = f"{PREFIX}purchase_count"
CHANGES = f"{PREFIX}changes"
SETTINGS = f"{PREFIX}settings"
CHUNK = 1000  # commands per pipeline round trip

# A for-sale set member is a rank, then the id: the created_at double's bits in 16 hex digits
# and the key in 20 digits. Both are big-endian, so members that tie on score sort by
# created_at, then by key, exactly as the SQLite store orders them.
RANK_WIDTH = 36
# A history member is a 20-digit purchase number, a colon, then the item id: purchases with the
# same timestamp sort in the order they were recorded.
SEQ_WIDTH = 21

# Item ids cannot all be declared as KEYS up front (a script finds out which items exist as it
# runs), so scripts build key names from ARGV[1], the prefix: fine on one Redis, not on Cluster.
COMMON = """
local prefix = ARGV[1]

local function item_key(id)
  return prefix .. 'item:' .. id
end

local function rank(created_at, key, id)
  local bits = struct.pack('>d', tonumber(created_at))
  -- bits:byte(1, 8) last in the call: only there does Lua pass on all eight of its values
  return string.format('%02x%02x%02x%02x%02x%02x%02x%02x', bits:byte(1, 8))
    .. string.format('%020d', tonumber(key)) .. id
end

-- Brings the for-sale sets in line with the item's hash, after any change to it.
local function refresh(id)
  local f = redis.call('HMGET', item_key(id), 'key', 'stock', 'sold', 'created_at', 'deleted')
  local member = rank(f[4], f[1], id)
  if f[5] == '0' and tonumber(f[2]) > 0 then
    redis.call('ZADD', prefix .. 'newest', f[4], member)
    if tonumber(f[3]) > 0 then
      redis.call('ZADD', prefix .. 'best_sellers', f[3], member)
    else
      redis.call('ZREM', prefix .. 'best_sellers', member)
    end
  else
    redis.call('ZREM', prefix .. 'newest', member)
    redis.call('ZREM', prefix .. 'best_sellers', member)
  end
end

local function log_change(key)
  return redis.call('XADD', prefix .. 'changes', 'MAXLEN', '~', 1000000, '*', 'key', key)
end

-- The newest entry id the change stream ever had, as RedisStore.change_cursor reads it.
local function newest_change()
  local info = redis.pcall('XINFO', 'STREAM', prefix .. 'changes')
  if info.err then
    return '0-0'  -- no stream yet
  end
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return info[i + 1]
    end
  end
end
"""

# ARGV: prefix, now, then id, artist_id, features, embedding, edition_size, stock, metadata,
# model_version, picture, picture media type ('' and '' for none) per item. Returns
# {'exhausted', ids} having written nothing when a given stock is more than the edition has
# left unsold, else {'ok', {key, created (0 or 1)} per item, the change stream's newest id
# before this write, its newest after}.
UPSERT = (
    COMMON
    + """
local now = ARGV[2]
local exhausted = {}
for i = 3, #ARGV, 10 do
  local id, edition, stock = ARGV[i], ARGV[i + 4], ARGV[i + 5]
  if stock ~= '' then
    local sold = tonumber(redis.call('HGET', item_key(id), 'sold') or '0')
    if tonumber(stock) > (tonumber(edition) or 1) - sold then
      table.insert(exhausted, id)
    end
  end
end
if #exhausted > 0 then
  return {'exhausted', exhausted}
end
-- Each work's key: stored, or for a new one (the first time the batch gives it) one of those
-- a single INCRBY draws for all of them.
local keys_of, fresh = {}, 0
for i = 3, #ARGV, 10 do
  local id = ARGV[i]
  if keys_of[id] == nil then
    keys_of[id] = redis.call('HGET', item_key(id), 'key')
    if not keys_of[id] then
      fresh = fresh + 1
    end
  end
end
local next_key = redis.call('INCRBY', prefix .. 'key_counter', fresh) - fresh
local logged_before = newest_change()
local logged_after = logged_before
local listed, live = {}, {}  -- new works' `keys` entries and `live` members, added in bulk
local result = {}
for i = 3, #ARGV, 10 do
  local id, artist, features, embedding, edition, stock, metadata, version, picture, kind =
    unpack(ARGV, i, i + 9)
  local item = item_key(id)
  local key = keys_of[id]
  if not key then
    -- A new work, written in one HSET: nothing to read back, no picture or for-sale entry
    -- of an earlier version to take out. Unspecified stock: the edition.
    next_key = next_key + 1
    key = string.format('%d', next_key)
    keys_of[id] = key
    if stock == '' then
      stock = string.format('%d', tonumber(edition) or 1)
    end
    redis.call('HSET', item, 'key', key, 'id', id, 'sold', 0, 'created_at', now,
      'artist_id', artist, 'features', features, 'embedding', embedding,
      'edition_size', edition, 'stock', stock, 'metadata', metadata, 'updated_at', now,
      'deleted', 0, 'model_version', version)
    if picture ~= '' then
      redis.call('HSET', prefix .. 'picture:' .. id, 'data', picture, 'type', kind)
    end
    if tonumber(stock) > 0 then
      redis.call('ZADD', prefix .. 'newest', now, rank(now, key, id))
    end
    table.insert(listed, key)
    table.insert(listed, id)
    table.insert(live, id)
    table.insert(result, {tonumber(key), 1})
  else
    if stock == '' then
      -- unspecified: a replaced work keeps what is left unsold
      local left = (tonumber(edition) or 1) - tonumber(redis.call('HGET', item, 'sold'))
      stock = math.min(tonumber(redis.call('HGET', item, 'stock')), math.max(left, 0))
      stock = string.format('%d', stock)  -- as digits: Lua would write 1e+17 for a large one
    end
    redis.call('HSET', item, 'artist_id', artist, 'features', features, 'embedding', embedding,
      'edition_size', edition, 'stock', stock, 'metadata', metadata, 'updated_at', now,
      'deleted', 0, 'model_version', version)
    if picture == '' then
      redis.call('DEL', prefix .. 'picture:' .. id)
    else
      redis.call('HSET', prefix .. 'picture:' .. id, 'data', picture, 'type', kind)
    end
    redis.call('SADD', prefix .. 'live', id)
    refresh(id)
    table.insert(result, {tonumber(key), 0})
  end
  logged_after = log_change(key)
end
-- In slices: unpack puts every value on Lua's stack, which holds about 8,000.
for first = 1, #listed, 1000 do
  redis.call('HSET', prefix .. 'keys', unpack(listed, first, math.min(first + 999, #listed)))
end
for first = 1, #live, 1000 do
  redis.call('SADD', prefix .. 'live', unpack(live, first, math.min(first + 999, #live)))
end
return {'ok', result, logged_before, logged_after}
"""
)

# ARGV: prefix, model_version, then key, updated_at, embedding per row. An item changed since
# its updated_at was read keeps what it has. Returns how many rows were written.
SET_EMBEDDINGS = (
    COMMON
    + """
local written = 0
for i = 3, #ARGV, 3 do
  local id = redis.call('HGET', prefix .. 'keys', ARGV[i])
  if id and redis.call('HGET', item_key(id), 'updated_at') == ARGV[i + 1] then
    redis.call('HSET', item_key(id), 'embedding', ARGV[i + 2], 'model_version', ARGV[2])
    written = written + 1
  end
end
return written
"""
)

# ARGV: prefix, id, now. Returns the deleted item's hash, or nil when unknown or gone already.
DELETE = (
    COMMON
    + """
local id, now = ARGV[2], ARGV[3]
local item = item_key(id)
if redis.call('HGET', item, 'deleted') ~= '0' then
  return false
end
redis.call('HSET', item, 'deleted', 1, 'updated_at', now)
redis.call('SREM', prefix .. 'live', id)
redis.call('DEL', prefix .. 'picture:' .. id)
refresh(id)
log_change(redis.call('HGET', item, 'key'))
return redis.call('HGETALL', item)
"""
)

# ARGV: prefix, user_id, timestamp, idempotency key ('' for none), seconds to remember it,
# the sale as a JSON object but for what the script finds out (sold_out, sold_out_keys), then
# the item ids (repeats are units). Returns
# {'replay', remembered sale} or {'unknown', ids} or {'short', ids} having written nothing,
# or {'ok', sold_out, sold_out_keys}.
PURCHASE = (
    COMMON
    + """
local user, timestamp, request_key = ARGV[2], ARGV[3], ARGV[4]
local remembered = prefix .. 'purchase_key:' .. request_key
if request_key ~= '' then
  local sale = redis.call('GET', remembered)
  if sale then
    return {'replay', sale}
  end
end
local first = 7
local order, units = {}, {}
for i = first, #ARGV do
  local id = ARGV[i]
  if not units[id] then
    table.insert(order, id)
    units[id] = 0
  end
  units[id] = units[id] + 1
end

-- A count an older version stored as Lua printed it ("1e+17"): tonumber reads it but HINCRBY
-- refuses it, and a script is not rolled back, so a later item's HINCRBY failing would leave
-- earlier items sold with no history. Such a count is rewritten as the digits it means before
-- the first write that changes anything.
local function as_digits(item, field, value)
  local n = tonumber(value)
  if n and value ~= string.format('%d', n) then
    redis.call('HSET', item, field, string.format('%d', n))
  end
  return n
end

local found, unknown = {}, {}
for _, id in ipairs(order) do
  local item = item_key(id)
  local f = redis.call('HMGET', item, 'key', 'stock', 'deleted', 'sold')
  if f[3] == '0' then
    as_digits(item, 'sold', f[4])
    found[id] = {key = tonumber(f[1]), stock = as_digits(item, 'stock', f[2])}
  else
    table.insert(unknown, id)
  end
end
if #unknown > 0 then
  return {'unknown', unknown}
end
local short = {}
for _, id in ipairs(order) do
  if found[id].stock < units[id] then
    table.insert(short, id)
  end
end
if #short > 0 then
  return {'short', short}
end

local sold_out, sold_out_keys = {}, {}
for _, id in ipairs(order) do
  redis.call('HINCRBY', item_key(id), 'stock', -units[id])
  redis.call('HINCRBY', item_key(id), 'sold', units[id])
  refresh(id)
  if found[id].stock == units[id] then
    table.insert(sold_out, id)
    table.insert(sold_out_keys, found[id].key)
  end
end
local count = #ARGV - first + 1
if count > 0 then
  local seq = redis.call('INCRBY', prefix .. 'purchase_count', count) - count
  for i = first, #ARGV do
    seq = seq + 1
    redis.call('ZADD', prefix .. 'history:' .. user, timestamp,
      string.format('%020d:', seq) .. ARGV[i])
  end
  redis.call('SADD', prefix .. 'users', user)
end
for _, key in ipairs(sold_out_keys) do
  log_change(key)
end
if request_key ~= '' then
  -- spliced, not decoded: cjson would round the timestamp to 14 digits
  local sale = string.sub(ARGV[6], 1, -2) .. ', "sold_out": ' .. cjson.encode(sold_out)
    .. ', "sold_out_keys": ' .. cjson.encode(sold_out_keys) .. '}'
  redis.call('SET', remembered, sale, 'EX', ARGV[5])
end
return {'ok', sold_out, sold_out_keys}
"""
)


OUTAGES = (redis.ConnectionError, redis.TimeoutError, redis.ResponseError)  # `is_outage` sorts


def is_outage(error: Exception) -> bool:
    """Whether `error` means the server cannot answer now but will: down, restarting or
    loading its data (ConnectionError, BusyLoadingError among them), a timeout, a replica that
    took over read-only, out of memory, or refusing writes after a failed save (MISCONF); a
    retry gets past each (503). A wrong password is a ConnectionError too, but no retry mends
    it, nor any other error reply: those stay 500s, for the operator."""
    if isinstance(error, redis.AuthenticationError):
        return False
    outages = (redis.ConnectionError, redis.TimeoutError, ReadOnlyError, OutOfMemoryError)
    if isinstance(error, outages):
        return True
    return isinstance(error, redis.ResponseError) and str(error).startswith("MISCONF")


# A customer's whole history, and the embedding and its model of each of the last `recent`
# works in it (false where the work is unknown): the read a recommendation starts from, in one
# round trip instead of one for the history and one for the embeddings.
PURCHASES_AND_EMBEDDINGS = """
local prefix, user, recent, width = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local members = redis.call('ZRANGE', prefix .. 'history:' .. user, 0, -1)
local fields = {}
for n = math.max(1, #members - recent + 1), #members do
  local item = string.sub(members[n], width + 1)
  local found = redis.call('HMGET', prefix .. 'item:' .. item, 'embedding', 'model_version')
  table.insert(fields, found[1] or false)
  table.insert(fields, found[2] or false)
end
return {members, fields}
"""


def _item_key(item_id: str) -> str:
    return f"{PREFIX}item:{item_id}"


def _chunks(values: list, size: int = CHUNK) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _count(raw: bytes | None) -> int:
    """A stored count (stock, sold, an edition's size). Scripts write digits, but a store
    written before they did can hold what Lua made of a large number ("1e+17"): it is read,
    not left to fail every reader of the item and every change follower."""
    try:
        return int(raw or 0)
    except ValueError:
        return int(float(raw or 0))


def _hash_to_item(fields: dict[bytes, bytes]) -> Item:
    edition = fields[b"edition_size"]
    return Item(
        key=int(fields[b"key"]),
        id=fields[b"id"].decode(),
        artist_id=fields[b"artist_id"].decode(),
        features=features_vector(fields[b"features"]),
        embedding=as_vector(fields[b"embedding"]),
        edition_size=_count(edition) if edition else None,
        stock=_count(fields[b"stock"]),
        sold=_count(fields[b"sold"]),
        metadata=json.loads(fields[b"metadata"]),
        created_at=float(fields[b"created_at"]),
        updated_at=float(fields[b"updated_at"]),
        deleted=fields[b"deleted"] == b"1",
    )


def _for_sale(stock: bytes | None, deleted: bytes | None) -> bool:
    return deleted == b"0" and _count(stock) > 0


def _entry_id(raw: bytes | str) -> tuple[int, ...]:
    """A stream entry id ("1700000000000-3") as numbers that order as Redis orders ids."""
    return cursor_position(raw.decode() if isinstance(raw, bytes) else raw)


def _trimmed_past(info: dict, cursor: str) -> bool:
    """Whether MAXLEN trimmed entries after `cursor` from the stream XINFO described. A cursor
    is an entry's id (or 0-0 before the first): entries were lost when the oldest one kept is
    younger than it (for 0-0: when any was trimmed at all), or, with none kept, when any came
    after it. Redis 6 does not count the entries ever added, so there a cursor of 0-0 with the
    stream's first entries still kept reads as a gap too: one needless rebuild, nothing missed.
    """
    after = _entry_id(cursor)
    if info["first-entry"] is None:
        return _entry_id(info["last-generated-id"]) > after
    if _entry_id(info["first-entry"][0]) <= after:
        return False
    if cursor != "0-0" or "entries-added" not in info:
        return True
    return int(info["entries-added"]) > int(info["length"])


def _ids_from_members(members: list[bytes]) -> list[str]:
    return [member[RANK_WIDTH:].decode() for member in members]


class RedisStore(Store):
    def __init__(self, url: str) -> None:
        # Bytes in and out: embeddings are raw float32, so strings are decoded here instead.
        # No retries: redis-py would resend a command whose connection broke, and a purchase
        # script may have been applied before it broke. A failure is the caller's 503 instead,
        # and a client retries a purchase with its Idempotency-Key.
        self._redis = redis.Redis.from_url(
            url, decode_responses=False, retry=Retry(NoBackoff(), 0), socket_timeout=5
        )
        self._upsert = self._redis.register_script(UPSERT)
        self._delete = self._redis.register_script(DELETE)
        self._purchase = self._redis.register_script(PURCHASE)
        self._set_embeddings = self._redis.register_script(SET_EMBEDDINGS)
        self._purchases_and_embeddings = self._redis.register_script(PURCHASES_AND_EMBEDDINGS)

    def upsert_items(self, items: list[NewItem]) -> UpsertResult:
        # Everything that can fail (encoding) happens here, before the script writes anything.
        now = time.time()
        args: list[str | bytes | int | float] = [PREFIX, now]
        blobs = features_blobs([item.features for item in items])
        for item, features in zip(items, blobs, strict=True):
            args += [
                item.id,
                item.artist_id,
                features,
                as_blob(item.embedding),
                "" if item.edition_size is None else int(item.edition_size),
                "" if item.stock is None else int(item.stock),
                json.dumps(item.metadata),
                item.model_version,
                b"" if item.picture is None else item.picture.data,
                "" if item.picture is None else item.picture.media_type,
            ]
        status, result, *logged = self._upsert(args=args)
        if status == b"exhausted":
            raise EditionExhaustedError([i.decode() for i in result])
        created: list[str] = []
        updated: list[str] = []
        keys: list[int] = []
        for item, (key, is_new) in zip(items, result, strict=True):
            (created if is_new else updated).append(item.id)
            keys.append(key)
        before, after = (position.decode() for position in logged)
        return UpsertResult(created, updated, keys, now, (before, after))

    def get_items(self, item_ids: list[str], include_deleted: bool = False) -> dict[str, Item]:
        found: dict[str, Item] = {}
        for chunk in _chunks(list(dict.fromkeys(item_ids))):
            pipe = self._redis.pipeline(transaction=False)
            for item_id in chunk:
                pipe.hgetall(_item_key(item_id))
            for fields in pipe.execute():
                if fields:
                    item = _hash_to_item(fields)
                    if include_deleted or not item.deleted:
                        found[item.id] = item
        return found

    def _fields(self, item_ids: list[str], *fields: str) -> Iterator[tuple[str, list]]:
        """(id, values) per distinct id, in pipelined chunks; unknown ids read as all None."""
        for chunk in _chunks(list(dict.fromkeys(item_ids))):
            pipe = self._redis.pipeline(transaction=False)
            for item_id in chunk:
                pipe.hmget(_item_key(item_id), *fields)
            yield from zip(chunk, pipe.execute(), strict=True)

    def picture(self, item_id: str) -> Picture | None:
        # Only a live work has one: deleting a work deletes its picture in the same script.
        data, kind = self._redis.hmget(f"{PREFIX}picture:{item_id}", "data", "type")
        return None if data is None else Picture(data, kind.decode())

    def embeddings(self, item_ids: list[str], model_version: str) -> dict[str, np.ndarray]:
        rows = self._fields(item_ids, "embedding", "model_version")
        wanted = model_version.encode()
        return {
            item_id: as_vector(blob)
            for item_id, (blob, version) in rows
            if blob is not None and (version or b"") == wanted
        }

    def features(self, item_ids: list[str]) -> dict[str, np.ndarray]:
        rows = self._fields(item_ids, "features")
        return {item_id: features_vector(blob) for item_id, (blob,) in rows if blob is not None}

    def set_embeddings(self, rows: list[tuple[int, float, np.ndarray]], model_version: str) -> int:
        written = 0
        for chunk in _chunks(rows):
            args: list[str | bytes | int] = [PREFIX, model_version]
            for key, updated_at, embedding in chunk:
                args += [int(key), repr(float(updated_at)), as_blob(embedding)]
            written += int(self._set_embeddings(args=args))
        return written

    def feature_dim(self) -> int | None:
        # Any stored work, deleted ones included: they still describe their buyers.
        key = self._redis.hrandfield(KEYS)
        if key is None:
            return None
        item_id = self._redis.hget(KEYS, key)
        blob = self._redis.hget(_item_key(item_id.decode()), "features")
        return feature_count(blob, len(blob))

    def get_setting(self, name: str) -> str | None:
        value = self._redis.hget(SETTINGS, name)
        return None if value is None else value.decode()

    def set_setting(self, name: str, value: str) -> None:
        self._redis.hset(SETTINGS, name, value)

    def for_sale(self, item_ids: list[str]) -> set[str]:
        rows = self._fields(item_ids, "stock", "deleted")
        return {item_id for item_id, (stock, gone) in rows if _for_sale(stock, gone)}

    def index_records(self, keys: list[int]) -> IndexRecords:
        unique = list(dict.fromkeys(int(k) for k in keys))
        found = self._redis.hmget(KEYS, unique) if unique else []
        ids = [i.decode() for i in found if i is not None]
        fields = ("key", "artist_id", "embedding", "stock", "deleted", "updated_at")
        return IndexRecords.of_rows(
            [
                (
                    int(key),
                    item_id,
                    artist.decode(),
                    embedding,
                    _for_sale(stock, deleted),
                    float(updated),
                    (version or b"").decode(),
                )
                for item_id, (key, artist, embedding, stock, deleted, updated, version) in (
                    self._fields(ids, *fields, "model_version")
                )
                if key is not None
            ]
        )

    def delete_item(self, item_id: str) -> Item | None:
        fields = self._delete(args=[PREFIX, item_id, time.time()])
        if fields is None:
            return None
        return _hash_to_item(dict(zip(fields[::2], fields[1::2], strict=True)))

    def record_purchase(
        self,
        user_id: str,
        item_ids: list[str],
        timestamp: float,
        idempotency_key: str | None = None,
    ) -> Sale:
        # Redis refuses a NaN score, which the script would only learn after taking stock.
        if math.isnan(timestamp):
            raise ValueError("a purchase timestamp cannot be NaN")
        asked = {"user_id": user_id, "item_ids": list(item_ids), "timestamp": float(timestamp)}
        status, *result = self._purchase(
            args=[
                PREFIX,
                user_id,
                float(timestamp),
                idempotency_key or "",
                IDEMPOTENCY_SECONDS,
                json.dumps(asked),
                *item_ids,
            ]
        )
        if status == b"replay":
            return replay(result[0], user_id, item_ids)
        if status == b"unknown":
            raise UnknownItemsError([i.decode() for i in result[0]])
        if status == b"short":
            raise NotForSaleError([i.decode() for i in result[0]])
        sold_out = [i.decode() for i in result[0]]
        return Sale(user_id, list(item_ids), timestamp, sold_out, result[1])

    def history(self, user_id: str, limit: int | None = None) -> list[Purchase]:
        if limit is not None and limit < 1:
            return []
        rows = self._redis.zrange(
            f"{PREFIX}history:{user_id}", 0 if limit is None else -limit, -1, withscores=True
        )
        return [Purchase(member[SEQ_WIDTH:].decode(), timestamp) for member, timestamp in rows]

    def purchases_and_embeddings(
        self, user_id: str, recent: int, model_version: str
    ) -> tuple[list[str], dict[str, np.ndarray]]:
        members, fields = self._purchases_and_embeddings(
            args=[PREFIX, user_id, max(recent, 0), SEQ_WIDTH]
        )
        item_ids = [member[SEQ_WIDTH:].decode() for member in members]
        wanted = model_version.encode()
        embeddings = {
            item_id: as_vector(blob)
            for item_id, blob, version in zip(
                item_ids[len(item_ids) - len(fields) // 2 :], fields[::2], fields[1::2], strict=True
            )
            if blob is not None and (version or b"") == wanted
        }
        return item_ids, embeddings

    def customers(self, limit: int) -> list[str]:
        # SSCAN reads a bounded slice of the set per call, never the whole of it as SORT
        # would; the ids it met are sorted as SQLite's are.
        found: set[bytes] = set()
        cursor = 0
        while True:
            cursor, members = self._redis.sscan(USERS, cursor, count=max(limit, 100))
            found.update(members)
            if cursor == 0 or len(found) >= limit:
                return sorted(member.decode() for member in found)[:limit]

    def catalogue(self, after: int = 0, limit: int | None = None) -> Catalogue:
        rows: list[tuple[int, str, str, np.ndarray, str, float]] = []
        fields = ("key", "artist_id", "embedding", "stock", "deleted", "model_version")
        # Keys are handed out by the counter: the keys above `after` are read in order, a
        # chunk at a time, up to the counter, so each item is met once however the for-sale
        # sets change meanwhile.
        last = int(self._redis.get(KEY_COUNTER) or 0)
        wanted = last if limit is None else limit
        for first in range(after + 1, last + 1, CHUNK):
            if len(rows) >= wanted:
                break
            chunk = list(range(first, min(first + CHUNK, last + 1)))
            listed = [i.decode() for i in self._redis.hmget(KEYS, chunk) if i is not None]
            rows += [
                (
                    int(key),
                    item_id,
                    artist.decode(),
                    as_vector(blob),
                    (version or b"").decode(),
                    float(changed),
                )
                for item_id, (key, artist, blob, stock, gone, version, changed) in self._fields(
                    listed, *fields, "updated_at"
                )
                if _for_sale(stock, gone)
            ]
        keys, ids, artists, embeddings, versions, updated = (
            list(column) for column in (zip(*rows[:wanted], strict=True) if rows else [()] * 6)
        )
        return Catalogue(np.array(keys, np.int64), ids, artists, embeddings, versions, updated)

    def best_sellers(self, limit: int) -> list[str]:
        if limit < 1:
            return []
        return _ids_from_members(self._redis.zrevrange(BEST_SELLERS, 0, limit - 1))

    def newest(self, limit: int) -> list[str]:
        if limit < 1:
            return []
        return _ids_from_members(self._redis.zrevrange(NEWEST, 0, limit - 1))

    def change_cursor(self) -> str:
        # The newest id ever logged, kept even when trimming emptied the stream: a cursor of
        # 0-0 there would read as having missed every trimmed entry.
        try:
            return self._redis.xinfo_stream(CHANGES)["last-generated-id"].decode()
        except redis.ResponseError:  # no stream yet: nothing was ever logged
            return "0-0"

    def changes_since(self, cursor: str, limit: int = 10_000) -> tuple[str, list[int]]:
        if limit < 1:
            return cursor, []
        # One MULTI: a trim between reading the stream's bounds and its entries would hide the
        # very gap the bounds are read to find.
        pipe = self._redis.pipeline(transaction=True)
        pipe.xinfo_stream(CHANGES).xrange(CHANGES, f"({cursor}", "+", count=limit)
        info, entries = pipe.execute(raise_on_error=False)
        if isinstance(info, redis.ResponseError):  # no stream yet: nothing was ever logged
            return cursor, []
        for reply in (info, entries):
            if isinstance(reply, Exception):
                raise reply
        if _trimmed_past(info, cursor):
            raise ChangesLost(f"the change stream was trimmed past {cursor}")
        if not entries:
            return cursor, []
        return entries[-1][0].decode(), [int(fields[b"key"]) for _, fields in entries]

    def counts(self) -> Counts:
        pipe = self._redis.pipeline(transaction=True)  # one consistent snapshot
        pipe.scard(LIVE).zcard(NEWEST).scard(USERS).get(PURCHASE_COUNT)
        items, for_sale, users, purchases = pipe.execute()
        return Counts(items=items, for_sale=for_sale, users=users, purchases=int(purchases or 0))

    def ping(self) -> None:
        self._redis.ping()

    def close(self) -> None:
        self._redis.close()
