"""Publishing denoised segments and picks to Redis streams, with a bounded in-order backlog.

Key layout and field encodings: :mod:`streamer.schema` (``docs/redis-schema.md`` is the contract for
consumers).

Idempotency: a segment's entry ID is ``<start_ns // 10^6>-<start_ns mod 10^6>``, so a replay writes the
same ID and Redis refuses it ("equal or smaller than the target stream top item"): counted as a
duplicate, not an error. Denoised picks have a lifecycle (``provisional`` reports of the early-warning
fast path, ``final``, ``retracted``): one Lua script keyed by onset (``onset`` keys, buckets of
``match_tolerance_s``) stores each state once, in order, and gives every report of an onset the
``pick_id`` of its first one and the next ``update``, across restarts. A final pick without a
provisional one is also guarded by the time of any final pick of the same station and phase within
``pick_tolerance_s`` (``picktime`` keys); raw-data picks by their ``pickseen`` key and ``picktime``
keys, as before. Every XADD trims with ``MAXLEN ~ RedisSettings.maxlen``.

Failure handling: :class:`RedisPublisher` keeps outputs in a bounded in-order backlog while Redis is
unreachable, retries with capped exponential backoff, and calls ``on_acked`` (in order) only once Redis
accepted the items, so the caller can advance SeedLink state behind what is safely stored. When the
bound is hit the **oldest** items are dropped, counted, logged and handed to ``on_dropped`` (under
the backlog's lock, before any later marker is written): the service holds SeedLink state behind
dropped picks, so a restart publishes them; dropped segments stay holes.

Limitations: segments of one station must be published in time order (a segment starting before the
newest stored one is refused as a duplicate); a replay with different segment boundaries may store
overlapping segments (consumers key on ``start_ns``). The password is never logged: URLs in logs have
credentials masked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamer.config import RedisSettings, mask_url
from streamer.metrics import Metrics
from streamer.records import NS_PER_S, OutputItem
from streamer.schema import PublishError, StreamKeys, encode_pick, encode_segment, flat_fields, segment_entry_id

log = logging.getLogger(__name__)

def connect(settings: RedisSettings, *, socket_timeout_s: float = 5.0) -> redis.Redis:
    """A binary-safe client for ``settings.url`` (``redis://``, ``rediss://``, ``unix://``) with the
    resolved password and CA file. Built-in retries are off: callers own backoff."""
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
    }
    password = settings.resolved_password()
    if password is not None:
        kwargs["password"] = password
    if settings.url.startswith("rediss://") and settings.tls_ca_file is not None:
        kwargs["ssl_ca_certs"] = str(settings.tls_ca_file)
    return redis.Redis.from_url(settings.url, **kwargs)


# ------------------------------------------------------------------------------- Lua scripts

# KEYS: stream, latest hash. ARGV: maxlen, entry id, station, end_ns, field, value, ...
# A refused explicit ID means the segment is stored already (replay): 0, not an error.
_SEGMENT_LUA = """
local r = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[2], unpack(ARGV, 5))
if type(r) == 'table' and r['err'] then
  if string.find(r['err'], 'equal or smaller', 1, true) then return 0 end
  return r
end
local cur = redis.call('HGET', KEYS[2], ARGV[3])
if (not cur) or tonumber(cur) < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
end
return 1
"""

# KEYS: stream, seen key, time-bucket keys b-1, b, b+1. ARGV: maxlen, ttl seconds, time_ns, tolerance_ns,
# field, value, ... A pick is a duplicate if its pick_id was published, or a pick of the same station,
# phase and source lies within the tolerance (a replay with slightly different stacking context).
_PICK_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local t = tonumber(ARGV[3])
local tol = tonumber(ARGV[4])
for i = 3, 5 do
  local other = redis.call('GET', KEYS[i])
  if other and math.abs(tonumber(other) - t) < tol then return 0 end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 5))
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[2])
return id
"""

# The lifecycle of denoised picks (provisional -> updates -> final or retracted), keyed by onset so the
# identity survives restarts: whatever pick_id and update a process proposes, the stored ones win.
# KEYS: stream, open-picks hash, onset keys b-1, b, b+1 (bucket = match tolerance), picktime keys
# b-1, b, b+1 (bucket = pick tolerance). ARGV: maxlen, ttl s, time_ns, match tolerance ns, status,
# proposed pick_id, rev (amplitude seconds), open value, pick tolerance ns, field, value, ...
# Returns the entry id, or 0 when this state of the onset is stored already (a replay, a late report).
_LIFECYCLE_LUA = """
local t = tonumber(ARGV[3])
local tol = tonumber(ARGV[4])
local status = ARGV[5]
local rev = tonumber(ARGV[7])
local found, fkey
for i = 3, 5 do
  local v = redis.call('GET', KEYS[i])
  if v then
    local id, st, up, r, ot = string.match(v, '^(%S+) (%S+) (%d+) (%d+) (%-?%d+)$')
    if ot and math.abs(tonumber(ot) - t) <= tol then
      found = {id, st, tonumber(up), tonumber(r), ot}
      fkey = KEYS[i]
      break
    end
  end
end
local id, up, ot
if found then
  -- closed: final is final; after a retraction only a final pick (a later decision) is news
  if found[2] == 'final' or (found[2] == 'retracted' and status ~= 'final') then return 0 end
  if status == 'provisional' and rev <= found[4] then return 0 end
  id, up, ot = found[1], found[3] + 1, found[5]
  if found[4] > rev then rev = found[4] end
else
  if status == 'retracted' then return 0 end
  if status == 'final' then
    local pt = tonumber(ARGV[9])
    for i = 6, 8 do
      local o = redis.call('GET', KEYS[i])
      if o and math.abs(tonumber(o) - t) < pt then return 0 end
    end
  end
  id, up, ot, fkey = ARGV[6], 0, ARGV[3], KEYS[4]
end
local xid = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'pick_id', id, 'update', tostring(up), unpack(ARGV, 10))
redis.call('SET', fkey, id .. ' ' .. status .. ' ' .. up .. ' ' .. rev .. ' ' .. ot, 'EX', ARGV[2])
if status == 'provisional' then
  redis.call('HSET', KEYS[2], id, ARGV[8] .. '|' .. up)
else
  redis.call('HDEL', KEYS[2], id)
end
if status == 'final' then redis.call('SET', KEYS[7], ARGV[3], 'EX', ARGV[2]) end
return xid
"""

# Server replies that mean "try again later" rather than "this item is bad".
_TRANSIENT_PREFIXES = (
    "OOM", "LOADING", "BUSY", "READONLY", "MASTERDOWN", "NOAUTH", "WRONGPASS", "NOPERM", "TRYAGAIN", "CLUSTERDOWN",
    "NOSCRIPT", "MISCONF", "NOREPLICAS",
)


def _is_transient(message: str) -> bool:
    """A server reply meaning "try again later". Every output is written by a Lua script, and a write
    the server refuses inside a script comes back wrapped in the script's error text, its code after
    a dash (``@user_script: 2: -OOM command not allowed ...``), not at the start."""
    return message.startswith(_TRANSIENT_PREFIXES) or any(f" -{code} " in message for code in _TRANSIENT_PREFIXES)


# --------------------------------------------------------------------------------- publisher

class _Transient(Exception):
    """A batch must be retried later (connection lost or a transient server reply)."""


class RedisPublisher:
    """Writes :class:`OutputItem` objects to Redis in order, holding them while Redis is down.

    ``publish(items)`` never blocks on Redis: it appends to the backlog (dropping the oldest items
    beyond ``settings.backlog_max_entries``). The writing happens in :meth:`run` (blocking, in a thread
    the caller owns) or the thread :meth:`start` creates; :meth:`write_pending` does one attempt for
    callers that drive it themselves. ``on_acked(items)`` is called from the writing thread, in
    order, after Redis accepted the items (duplicates included: they are stored).
    """

    def __init__(
        self,
        settings: RedisSettings,
        metrics: Metrics,
        on_acked: Callable[[list[OutputItem]], None] | None = None,
        *,
        on_dropped: Callable[[list[OutputItem]], None] | None = None,
        client: redis.Redis | None = None,
        batch_max_items: int = 256,
        pick_dedupe_ttl_s: float = 86_400.0,
        pick_tolerance_s: float = 1.0,
        match_tolerance_s: float = 0.5,
        retry_min_s: float = 0.1,
        idle_ping_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on_acked = on_acked
        self.on_dropped = on_dropped
        self.keys = StreamKeys(settings.stream_prefix)
        self.client = client if client is not None else connect(settings)
        self.batch_max_items = batch_max_items
        self.pick_dedupe_ttl_s = max(1, int(pick_dedupe_ttl_s))
        self.pick_tolerance_ns = max(1, round(pick_tolerance_s * NS_PER_S))
        self.retry_min_s = retry_min_s
        self.idle_ping_s = idle_ping_s
        self._last_contact = 0.0
        self._segment_script = self.client.register_script(_SEGMENT_LUA)
        self._pick_script = self.client.register_script(_PICK_LUA)
        self._lifecycle_script = self.client.register_script(_LIFECYCLE_LUA)
        self.match_tolerance_ns = max(1, round(match_tolerance_s * NS_PER_S))
        self._backlog: deque[tuple[int, OutputItem]] = deque()
        self._seq = 0
        self._cond = threading.Condition()
        self._in_flight = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected: bool | None = None
        self._backoff_s = 0.0
        self._dropped_since_log = 0
        self._last_drop_log = 0.0
        self.rejected = 0
        metrics.redis_backlog.set(0)
        log.info("Redis output to %s, prefix %r", mask_url(settings.url), settings.stream_prefix)

    # ------------------------------------------------------------------ producer side

    @property
    def backlog_size(self) -> int:
        with self._cond:
            return len(self._backlog)

    @property
    def connected(self) -> bool:
        return bool(self._connected)

    def publish(self, items: Iterable[OutputItem]) -> None:
        """Queue items for Redis (in order); never blocks on Redis."""
        lost: list[OutputItem] = []
        with self._cond:
            for item in items:
                self._seq += 1
                self._backlog.append((self._seq, item))
            bound = self.settings.backlog_max_entries
            while len(self._backlog) > bound:
                lost.append(self._backlog.popleft()[1])
            if lost and self.on_dropped is not None:
                # still under the lock: no marker queued after these may be written (and acknowledged)
                # before the caller knows what they needed
                self.on_dropped(lost)
            self.metrics.redis_backlog.set(len(self._backlog))
            self._cond.notify_all()
        dropped = len(lost)
        if dropped:
            self.metrics.redis_backlog_dropped.inc(dropped)
            self._dropped_since_log += dropped
            now = time.monotonic()
            if now - self._last_drop_log >= 1.0:
                log.error(
                    "Redis backlog full (%d entries): dropped the %d oldest outputs; they are lost",
                    self.settings.backlog_max_entries,
                    self._dropped_since_log,
                )
                self._dropped_since_log = 0
                self._last_drop_log = now

    def read_latest(self) -> dict[str, int]:
        """``{prefix}:latest``: per station, the end (ns) of its newest published segment; empty when
        Redis cannot be read now (logged). Used at start-up so outputs continue where they ended."""
        try:
            raw = self.client.hgetall(self.keys.latest)
        except (redis.RedisError, OSError) as exc:
            log.warning("could not read %s at start-up (%s): a flushed tail may be published twice", self.keys.latest, exc)
            return {}
        out: dict[str, int] = {}
        for k, v in dict(raw).items():  # type: ignore[arg-type]
            try:
                out[k.decode() if isinstance(k, bytes) else str(k)] = int(v)
            except (TypeError, ValueError):
                continue
        return out

    # ------------------------------------------------------------------ writer side

    def start(self) -> threading.Thread:
        """Run :meth:`run` in a daemon thread (``coldstream-publisher``)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="coldstream-publisher", daemon=True)
            self._thread.start()
        return self._thread

    def run(self, stop: threading.Event | None = None) -> None:
        """Write the backlog until ``stop`` (or :meth:`close`) is set; retries with capped backoff."""
        stop_event = stop or self._stop

        def stopped() -> bool:
            return stop_event.is_set() or self._stop.is_set()

        while not stopped():
            with self._cond:
                idle = not self._backlog
                if idle:
                    self._cond.wait(timeout=min(0.5, self.idle_ping_s))
            if idle:
                if time.monotonic() - self._last_contact >= self.idle_ping_s:
                    self._ping()
                continue
            try:
                ok = self.write_pending()
            except Exception as exc:  # a bug must not end publishing: count, back off, retry
                log.exception("unexpected error while publishing to Redis")
                self._on_failure(exc)
                ok = False
            if not ok:
                # back off without being woken by new outputs (they just join the backlog)
                deadline = time.monotonic() + self._backoff_s
                while not stopped() and time.monotonic() < deadline:
                    self._stop.wait(min(0.1, max(0.0, deadline - time.monotonic())))

    def write_pending(self) -> bool:
        """Try once to write the head of the backlog (up to ``batch_max_items``).

        Returns False when Redis could not be reached (the items stay queued; the backoff grows)."""
        with self._cond:
            batch = [self._backlog[i] for i in range(min(self.batch_max_items, len(self._backlog)))]
            self._in_flight = len(batch)
        if not batch:
            with self._cond:
                self._in_flight = 0
            return True
        try:
            try:
                results = self._write([item for _, item in batch])
            except _Transient as exc:
                self._on_failure(exc)
                return False
            if any(item.kind != "marker" for _, item in batch):
                self._on_success()  # a batch of markers alone never reached Redis: it proves nothing
            last_seq = batch[-1][0]
            with self._cond:
                while self._backlog and self._backlog[0][0] <= last_seq:
                    self._backlog.popleft()
                self.metrics.redis_backlog.set(len(self._backlog))
            items = [item for _, item in batch]
            self._account(items, results)
            if self.on_acked is not None:
                try:
                    self.on_acked(items)
                except Exception:  # the caller's bug must not stop publishing
                    log.exception("on_acked callback failed")
            return True
        finally:
            # only now may flush() report "done": on_acked has run for everything written
            with self._cond:
                self._in_flight = 0
                self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the backlog is written (by the running writer, or here if none runs)."""
        deadline = time.monotonic() + timeout_s
        running = self._thread is not None and self._thread.is_alive()
        while time.monotonic() < deadline:
            with self._cond:
                if not self._backlog and not self._in_flight:
                    return True
                if running:
                    self._cond.wait(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                    continue
            if not self.write_pending():
                time.sleep(min(self._backoff_s, max(0.0, deadline - time.monotonic())))
        with self._cond:
            return not self._backlog and not self._in_flight

    def close(self, flush_timeout_s: float = 0.0) -> None:
        """Optionally flush, stop the writer thread and close the connection. Items still queued are
        logged (they were never acknowledged, so their data will be replayed after a restart)."""
        if flush_timeout_s > 0:
            self.flush(flush_timeout_s)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        left = self.backlog_size
        if left:
            log.warning("closing the Redis publisher with %d outputs unpublished", left)
        self.client.close()

    # ------------------------------------------------------------------ internals

    def _write(self, items: list[OutputItem]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        maxlen = str(self.settings.maxlen)
        written: list[int] = []
        results: list[Any] = [None] * len(items)
        for i, item in enumerate(items):
            if item.kind == "segment" and item.segment is not None:
                seg = item.segment
                try:
                    entry_id = segment_entry_id(seg.start_ns)
                    fields = encode_segment(seg, item.model, item.model_version)
                except (PublishError, ValueError, TypeError) as exc:
                    results[i] = PublishError(f"segment of {seg.station_id} cannot be encoded: {exc}")
                    continue
                args = [maxlen, entry_id, seg.station_id, str(seg.end_ns), *flat_fields(fields)]
                self._segment_script(
                    keys=[self.keys.denoised(seg.station_id), self.keys.latest], args=args, client=pipe
                )
            elif item.kind == "pick" and item.pick is not None and item.pick.source == "denoised":
                self._write_lifecycle(item.pick, pipe, maxlen)
            elif item.kind == "pick" and item.pick is not None:
                pick = item.pick
                bucket = pick.time_ns // self.pick_tolerance_ns
                buckets = [
                    self.keys.picktime(pick.station_id, pick.phase, pick.source, b) for b in (bucket - 1, bucket, bucket + 1)
                ]
                self._pick_script(
                    keys=[self.keys.picks, self.keys.pickseen(pick.pick_id), *buckets],
                    args=[
                        maxlen, str(self.pick_dedupe_ttl_s), str(pick.time_ns), str(self.pick_tolerance_ns),
                        *flat_fields(dict(encode_pick(pick))),
                    ],
                    client=pipe,
                )
            else:
                continue
            written.append(i)
        if not written:
            return results
        try:
            replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise _Transient(str(exc)) from exc
        except redis.ResponseError as exc:  # e.g. script loading refused
            if _is_transient(str(exc)):
                raise _Transient(str(exc)) from exc
            raise
        for i, reply in zip(written, replies):
            if isinstance(reply, Exception) and _is_transient(str(reply)):
                raise _Transient(str(reply))
            results[i] = reply
        return results

    def _write_lifecycle(self, pick: Any, pipe: Any, maxlen: str) -> None:
        mb = pick.time_ns // self.match_tolerance_ns
        pb = pick.time_ns // self.pick_tolerance_ns
        fields = encode_pick(pick)
        fields.pop("pick_id")
        fields.pop("update")
        rev = len(pick.details.amplitudes) if pick.details is not None else 0
        open_value = f"{pick.station_id}|{pick.phase}|{pick.time_ns}|{pick.probability:.4f}"
        self._lifecycle_script(
            keys=[
                self.keys.picks, self.keys.openpicks,
                *(self.keys.onset(pick.station_id, pick.phase, b) for b in (mb - 1, mb, mb + 1)),
                *(self.keys.picktime(pick.station_id, pick.phase, pick.source, b) for b in (pb - 1, pb, pb + 1)),
            ],
            args=[
                maxlen, str(self.pick_dedupe_ttl_s), str(pick.time_ns), str(self.match_tolerance_ns), pick.status,
                pick.pick_id, str(rev), open_value, str(self.pick_tolerance_ns), *flat_fields(dict(fields)),
            ],
            client=pipe,
        )

    def read_open_picks(self) -> list[Any]:
        """Provisional picks an earlier run left without a final or retracted report (start-up; []
        when Redis is unreachable: the output stage then only decides its own)."""
        from streamer.picks import Pick

        try:
            raw = self.client.hgetall(self.keys.openpicks)
        except (redis.ConnectionError, redis.TimeoutError, OSError, redis.ResponseError) as exc:
            log.warning("could not read the open provisional picks from Redis (%s)", exc)
            return []
        out = []
        for k, v in raw.items():
            try:
                station, phase, t, prob, update = (v.decode() if isinstance(v, bytes) else str(v)).split("|")
                pick_id = k.decode() if isinstance(k, bytes) else str(k)
                out.append(Pick(pick_id, station, phase, int(t), float(prob), "denoised", "", "", "", "", 0,
                                time.time_ns(), status="provisional", update=int(update)))
            except ValueError:
                log.warning("ignoring a malformed open-pick entry %r", k)
        return out

    def _account(self, items: list[OutputItem], results: list[Any]) -> None:
        now = time.time_ns()
        m = self.metrics
        for item, reply in zip(items, results):
            if item.kind == "marker":
                continue
            kind = item.kind
            if isinstance(reply, Exception):
                self.rejected += 1
                m.publish_errors.inc()
                log.error("a %s output was not published (dropped): %s", kind, reply)
                continue
            if reply is None:
                continue
            if reply == 0:
                m.publish_duplicates.labels(kind=kind).inc()
                continue
            m.published.labels(kind=kind).inc()
            if item.pick is not None:
                if item.pick.status == "final":
                    m.picks.labels(phase=item.pick.phase, source=item.pick.source).inc()
                elif item.pick.status == "provisional" and item.pick.update == 0 and item.pick.details is not None \
                        and item.pick.details.onset_arrival_ns > 0:
                    m.eew_pick_latency.observe(max(0.0, (now - item.pick.details.onset_arrival_ns) / NS_PER_S))
            if item.segment is not None and item.segment.newest_arrival_ns > 0:
                m.end_to_end_latency.observe(max(0.0, (now - item.segment.newest_arrival_ns) / NS_PER_S))

    def _ping(self) -> None:
        """While idle, keep ``redis_connected`` true to the server's state (no error counted)."""
        self._last_contact = time.monotonic()
        try:
            self.client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self.metrics.redis_connected.set(0)
            if self._connected is not False:
                log.warning("Redis %s unavailable while idle (%s)", mask_url(self.settings.url), exc)
            self._connected = False
            return
        except redis.ResponseError:
            pass  # e.g. NOAUTH: the next write reports it
        else:
            self._on_success()

    def _on_failure(self, exc: Exception) -> None:
        self.metrics.publish_errors.inc()
        self.metrics.redis_connected.set(0)
        self._backoff_s = min(self.settings.retry_max_s, max(self.retry_min_s, self._backoff_s * 2))
        if self._connected is not False:
            log.warning(
                "Redis %s unavailable (%s); holding %d outputs, retrying (backoff up to %.0f s)",
                mask_url(self.settings.url), exc, self.backlog_size, self.settings.retry_max_s,
            )
        self._connected = False

    def _on_success(self) -> None:
        self._last_contact = time.monotonic()
        self.metrics.redis_connected.set(1)
        self._backoff_s = 0.0
        if self._connected is False:
            log.info("Redis %s available again; flushing %d outputs", mask_url(self.settings.url), self.backlog_size)
        elif self._connected is None:
            log.info("connected to Redis %s", mask_url(self.settings.url))
        self._connected = True
