"""Redis stream work queues of scale-out: at-least-once delivery through a consumer group.

Finished entries are deleted on acknowledgement, so a stream holds only unfinished work, bounded by
its own approximate ``maxlen`` (``redis.work_queue_maxlen``, not the output streams' ``redis.maxlen``).

Limitations: entries trimmed before any consumer read them are not seen here (only the ingest's
collector notices, when it gives the window up); a warning is logged while unfinished work nears
the bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import redis

from streamer.records import Window
from streamer.scaleout.codec import decode_result, decode_window, encode_result, encode_window
from streamer.schema import EntryDecodeError, StreamKeys, field_text, flat_fields
from streamer.worker import BatchResult

log = logging.getLogger(__name__)

I = TypeVar("I")  # what producers push
O = TypeVar("O")  # what consumers read

WINDOWS_STREAM = "windows"
RESULTS_STREAM = "results"
PAGE = 500  # entries per XAUTOCLAIM call

__all__ = ["RESULTS_STREAM", "WINDOWS_STREAM", "WorkQueue", "result_queue", "window_queue"]

# KEYS: stream, seen key. ARGV: maxlen, ttl seconds, field, value, ...
# XADD before SET: if the XADD fails nothing is marked seen, so a retry still publishes.
_DEDUPE_XADD_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return id
"""


class WorkQueue(Generic[I, O]):
    """Scale-out transport of work items (windows, worker results) over one Redis stream and a
    consumer group; ``encode(item) -> (item_id, fields)`` and ``decode(fields) -> item`` are the codec
    (:func:`window_queue` and :func:`result_queue` build the two the service uses).

    Producers ``push`` (deduplicated by the item id for ``dedupe_ttl_s``, so a restarted ingest does
    not queue a window twice); consumers ``read`` (their own unacknowledged entries first, then new
    ones), ``ack`` after their outputs were published, and ``reclaim`` entries a crashed consumer left
    pending longer than ``min_idle_ms`` (XAUTOCLAIM, Redis >= 6.2). An entry delivered more than
    ``max_deliveries`` times, or one that does not decode, is moved to ``{prefix}:{stream}:dead`` and
    acknowledged.

    Delivery is at least once: a consumer that published outputs but crashed before ``ack`` gets its
    window processed again, and the idempotent outputs absorb the repeat.

    Finished entries are deleted on ``ack`` (XACK + XDEL), so the stream holds only unfinished work
    and ``maxlen`` bounds that. Entries trimmed before they were finished are lost work: counted in
    ``on_trimmed(n)`` (the service's ``coldstream_work_queue_trimmed_total``) and logged. An entry moved
    to the dead-letter stream is logged and reported to ``on_dead_lettered(reason)`` (``deliveries``:
    delivered more than ``max_deliveries`` times; ``undecodable``), the service's
    ``coldstream_work_queue_dead_lettered_total``.
    :meth:`release` forgets an item's de-duplication mark once its outputs are published, so a
    replay after a restart may compute it again instead of waiting for a result that cannot come.
    """

    def __init__(
        self,
        client: redis.Redis,
        encode: Callable[[I], tuple[str, dict[str, bytes | str]]],
        decode: Callable[[dict[Any, Any]], O],
        prefix: str = "coldstream",
        group: str = "workers",
        consumer: str = "worker-1",
        *,
        stream: str = "windows",
        maxlen: int = 100_000,
        dedupe_ttl_s: float = 3600.0,
        max_deliveries: int = 5,
        on_trimmed: Callable[[int], None] | None = None,
        on_dead_lettered: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.encode = encode
        self.decode = decode
        self.keys = StreamKeys(prefix)
        self.key = self.keys.windows(stream)
        self.dead_key = self.keys.dead(stream)
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.maxlen = maxlen
        self.dedupe_ttl_s = max(1, int(dedupe_ttl_s))
        self.max_deliveries = max_deliveries
        self.on_trimmed = on_trimmed
        self.on_dead_lettered = on_dead_lettered
        self._push_script = client.register_script(_DEDUPE_XADD_LUA)
        self._pushes = 0
        self._own_pending_done = False
        self._pending_cursor = "0-0"
        self._group_ready = False

    def ensure_group(self) -> None:
        """Create the stream and consumer group if missing (reading from the start of the stream)."""
        if self._group_ready:
            return
        try:
            self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def push(self, item: I) -> str | None:
        """Queue an item; returns its entry ID, or None if an item with its id was queued already."""
        item_id, fields = self.encode(item)
        args = [str(self.maxlen), str(self.dedupe_ttl_s), *flat_fields(fields)]
        reply = self._push_script(keys=[self.key, self.keys.windowseen(item_id, self.stream)], args=args)
        if reply == 0:
            return None
        self._pushes += 1
        if self._pushes % 200 == 0:
            self._check_room()
        return field_text(reply)

    def _check_room(self) -> None:
        """Warn while unfinished work nears ``maxlen`` (finished entries are deleted, so the length
        is unfinished work): beyond it the oldest unread items are trimmed."""
        length = int(self.client.xlen(self.key))
        if length >= 0.9 * self.maxlen:
            log.warning("%s holds %d unfinished items (work_queue_maxlen %d): are the workers running? "
                        "Beyond the bound the oldest are trimmed and lost", self.key, length, self.maxlen)

    def release(self, item_ids: Iterable[str]) -> None:
        """Forget the de-duplication marks of finished items (their outputs are published)."""
        keys = [self.keys.windowseen(i, self.stream) for i in item_ids]
        if keys:
            self.client.delete(*keys)

    def read(self, count: int = 16, block_ms: int | None = 1000) -> list[tuple[str, O]]:
        """Up to ``count`` windows for this consumer: first its own pending entries (after a
        restart), then new ones, waiting up to ``block_ms`` (None = do not block)."""
        while not self._own_pending_done:
            # an explicit ID reads this consumer's pending entries after it, so consecutive reads
            # walk through them once even when the caller acknowledges later
            cursor = self._pending_cursor
            reply: Any = self._group_call(
                lambda: self.client.xreadgroup(self.group, self.consumer, {self.key: cursor}, count=count)
            )
            entries = reply[0][1] if reply else []
            if not entries:
                self._own_pending_done = True
                break
            self._pending_cursor = field_text(entries[-1][0])
            decoded = self._decode_entries(entries)
            if decoded:
                return decoded
        reply = self._group_call(
            lambda: self.client.xreadgroup(self.group, self.consumer, {self.key: ">"}, count=count, block=block_ms)
        )
        return self._decode_entries(reply[0][1] if reply else [])

    def skip_own_pending(self) -> None:
        """This consumer's pending entries were taken care of (``reclaim``): ``read`` serves new ones."""
        self._own_pending_done = True

    def ack(self, entry_ids: Iterable[str]) -> int:
        """Acknowledge finished entries and delete them from the stream."""
        ids = list(entry_ids)
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.key, self.group, *ids)
        pipe.xdel(self.key, *ids)
        acked, _deleted = pipe.execute()
        return int(acked)

    def reclaim(self, min_idle_ms: int, count: int = 100) -> list[tuple[str, O]]:
        """Take over entries pending on any consumer for at least ``min_idle_ms`` (one XAUTOCLAIM
        sweep from the start of the PEL, up to ``count``); poison entries go to the dead-letter stream."""
        claimed: list[Any] = []
        start = "0-0"
        while True:
            reply = self._group_call(
                lambda: self.client.xautoclaim(self.key, self.group, self.consumer, min_idle_ms, start,
                                               count=min(count, PAGE))
            )
            start = field_text(reply[0])
            claimed.extend(reply[1])
            self._count_deleted(reply)
            if start == "0-0" or len(claimed) >= count:
                break
        if claimed:
            log.info("%s reclaimed %d pending entries idle >= %d ms", self.consumer, len(claimed), min_idle_ms)
        return self._decode_entries(claimed)

    def reclaim_all(self, min_idle_ms: int = 0) -> list[tuple[str, O]]:
        """Take over every entry pending on any consumer for ``min_idle_ms``: one pass over the whole
        pending list in pages of ``PAGE`` (a huge COUNT makes Redis 7 allocate for all of it)."""
        claimed: list[Any] = []
        start = "0-0"
        while True:
            reply = self._group_call(
                lambda: self.client.xautoclaim(self.key, self.group, self.consumer, min_idle_ms, start, count=PAGE)
            )
            start = field_text(reply[0])
            claimed.extend(reply[1])
            self._count_deleted(reply)
            if start == "0-0":
                break
        return self._decode_entries(claimed)

    def _count_deleted(self, reply: Any) -> None:
        """Redis >= 7 lists pending entries that were trimmed away (lost work) in XAUTOCLAIM's reply."""
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            log.error("%s: %d pending entries were trimmed before they were finished: lost", self.key, len(deleted))
            if self.on_trimmed is not None:
                self.on_trimmed(len(deleted))

    def _group_call(self, call: Callable[[], Any]) -> Any:
        """Run a consumer-group command; re-create the group once if Redis lost it (a restart without
        persistence) instead of failing with NOGROUP for ever."""
        self.ensure_group()
        try:
            return call()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("%s: consumer group %s is gone (Redis restarted empty?); creating it again", self.key, self.group)
            self._group_ready = False
            self.ensure_group()
            return call()

    def pending_count(self) -> int:
        """Entries delivered to some consumer and not acknowledged."""
        self.ensure_group()
        info = self.client.xpending(self.key, self.group)
        return int(info["pending"])

    def _deliveries(self, ids: list[str]) -> dict[str, int]:
        """Delivery count of each entry, one XPENDING per entry in one round trip. Not one range from
        the first id to the last with COUNT len(ids): entries this consumer holds between them (a
        reclaim skips those not idle long enough) would fill the COUNT and leave the later ones out."""
        pipe = self.client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.key, self.group, min=entry_id, max=entry_id, count=1)
        return {field_text(r["message_id"]): int(r["times_delivered"]) for rows in pipe.execute() for r in rows}

    def _decode_entries(self, entries: list[Any]) -> list[tuple[str, O]]:
        if not entries:
            return []
        ids = [field_text(e[0]) for e in entries]
        deliveries = self._deliveries(ids)
        out: list[tuple[str, O]] = []
        for (raw_id, fields), entry_id in zip(entries, ids):
            if not fields:  # trimmed away while pending: the work is lost
                log.error("%s entry %s was trimmed before it was finished (work_queue_maxlen %d reached): lost",
                          self.key, entry_id, self.maxlen)
                if self.on_trimmed is not None:
                    self.on_trimmed(1)
                self.ack([entry_id])
                continue
            n = deliveries.get(entry_id, 1)
            if n > self.max_deliveries:
                self._dead_letter(entry_id, fields, f"delivered {n} times")
                continue
            try:
                out.append((entry_id, self.decode(fields)))
            except EntryDecodeError as exc:
                self._dead_letter(entry_id, fields, str(exc))
        return out

    def _dead_letter(self, entry_id: str, fields: dict[Any, Any], reason: str) -> None:
        log.error("%s entry %s moved to %s: %s", self.stream, entry_id, self.dead_key, reason)
        payload = dict(fields)
        payload[b"original_id"] = entry_id.encode()
        payload[b"reason"] = reason.encode()
        self.client.xadd(self.dead_key, payload, maxlen=self.maxlen, approximate=True)
        self.ack([entry_id])
        if self.on_dead_lettered is not None:
            self.on_dead_lettered("deliveries" if reason.startswith("delivered ") else "undecodable")


def _window_item(window: Window) -> tuple[str, dict[str, bytes | str]]:
    return window.window_id, encode_window(window)


def _result_item(item: tuple[BatchResult, int]) -> tuple[str, dict[str, bytes | str]]:
    result, i = item
    return result.windows[i].window_id, encode_result(result, i)


def window_queue(
    client: redis.Redis, prefix: str, group: str, consumer: str, *, stream: str = WINDOWS_STREAM, **kwargs: Any
) -> WorkQueue[Window, Window]:
    """The queue of model input windows (``{prefix}:windows``), ingest -> workers."""
    return WorkQueue(client, _window_item, decode_window, prefix, group, consumer, stream=stream, **kwargs)


def result_queue(
    client: redis.Redis, prefix: str, group: str, consumer: str, **kwargs: Any
) -> WorkQueue[tuple[BatchResult, int], BatchResult]:
    """The queue of worker results (``{prefix}:results``), workers -> ingest. ``push`` takes
    ``(batch_result, index)``; ``read`` returns one-window results."""
    return WorkQueue(client, _result_item, decode_result, prefix, group, consumer, stream=RESULTS_STREAM, **kwargs)
