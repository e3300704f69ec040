"""Byte-addressed I/O on one attached volume: the host side of EBS encryption (R-ATTACH-3).

A volume is stored as 512 KiB blocks in the block engine (``write_block``/``read_block``
with the volume id as owner), each sealed under the volume's data key. An attached volume
adds a bounded write-back cache of plaintext blocks, held in memory only:

- a write smaller than a block is read-modify-write: the block is read (and opened) once,
  patched in memory and marked dirty; a whole-block write needs no read;
- a dirty block reaches the store (encrypted, fresh nonce, bound to its index and data
  key by the block engine) when it is evicted, on ``flush`` (durable on return), on FUA,
  at a snapshot (:meth:`OpenVolume.quiesced`) and at close (detach, stop, shutdown) —
  never before: a write without FUA is acknowledged from memory, as NBD allows, and
  many small writes to one block cost one seal;
- an evicted block is sealed and written at once but not made durable nor recorded
  (``BlockEngine.stage_blocks``): NBD asks for durability only at FLUSH/FUA, so the
  staged blocks are published together then (``publish_blocks``: one store flush and
  one transaction), or earlier when ``_publish_limit`` of them wait (a sequential
  writer's direct writes: ``PUBLISH_EARLY_BLOCKS``, in the background) or the oldest is
  ``PUBLISH_AGE`` seconds old (``publish_due``, from the attach engine's periodic task).
  Until then this object remembers where they are (``_unpublished``) and reads them
  back from there. A crash before publication loses only unflushed writes; their
  objects are orphans, deleted by the block engine's ``sweep_orphans``;
- with a journal (``journal_path``, :mod:`.journal`), a write smaller than a block to a
  block the cache does not hold is appended to the volume's write journal as a sealed
  record instead of a read-modify-write of the block; reads overlay the records; FLUSH
  and FUA make them durable with one fdatasync; the journal is merged into whole blocks
  when full — outside the volume's lock: it is frozen and a new journal takes writes
  meanwhile (``_rotate``, ``_merge_frozen``; reads overlay both) — at a snapshot and at
  close (under the lock), and replayed at the next open after a crash (both journals).
  Reads of blocks with records take under the lock only what to read (where the block
  is, and both journals' records over the span, their files held: ``VolumeJournal.hold``)
  and read it outside the lock.
  A block with records takes its partial writes in the journal until the merge (the
  cache holds it clean); a whole-block write makes it leave (cached dirty, stored as
  usual, with a mark in the journal so replay skips the records it covers);
- trim and write-zeroes of whole blocks store an all-zero block, which the block engine
  records without an object (the old object is released: the space is given back);
  over blocks that already read as zeros they do nothing;
- a read that misses the cache and is not sequential reads only the sectors it covers
  (``BlockEngine.open_ref_range``: format 3 objects are checked per 16 KiB sector) and
  leaves the cache alone; sequential reads load whole blocks, reading ahead. Where blocks
  are stored is learnt a window at a time (one range query per ``REF_WINDOW`` blocks);
- ``try_read``/``try_write`` serve a request the cache answers without waiting (the NBD
  connection's own thread calls them; ``try_read`` also a small random miss whose object
  is known and whose sectors are in the page cache: ``preadv(RWF_NOWAIT)``);
  ``allocation`` answers NBD_CMD_BLOCK_STATUS;
- a read-only OpenVolume is a snapshot export: writes raise :class:`ReadOnly`.

Blocks never written read from the volume's lineage, i.e. the snapshot it was created
from (copy-on-write: a 16 GiB volume from a 1 GiB image stores 1 GiB plus what is written).

Memory is bounded by ``cache_blocks`` × 512 KiB per open volume, whatever its size.
One lock per volume orders every operation; several NBD connections to one export share
this object, so a flush on any of them covers writes acknowledged on all (multi-conn).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ebscrypt.engines.attach.journal import (HeldRecords, Journal, JournalIntegrityError, Position,
                                             VolumeJournal, covers)
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE, ZERO_BLOCK, DataKey, is_zero_block
from ebscrypt.engines.blocks.engine import StagedBlock
from ebscrypt.engines.blocks.store import ObjectMissing

GIB = 1024 ** 3
# Blocks whose entries one lookup learns (a range query): 256 blocks = 128 MiB of volume.
REF_WINDOW = 256
SEQUENTIAL_MIN = 64 * 1024  # a read this large next to the last one is sequential at once
INLINE_MISS_MAX = 64 * 1024  # a miss this small may be served on the NBD connection's thread
RUN_SLACK = 64  # blocks a read may land ahead of the furthest one and still continue its pass (_note_run)
STREAM_READERS = 2  # a volume's stream reads being read and checked at once (read)
_UNKNOWN = object()
# Read-ahead loads, in tasks of this many blocks (several run at once: SHA-256 and the
# reads release the GIL), on a pool of their own: never the write-behind pool, whose
# ``map`` a flush waits on while holding a volume's lock, which a load takes at its end.
READ_AHEAD_TASK = 8
_read_ahead: ThreadPoolExecutor | None = None
_read_ahead_lock = threading.Lock()


def _read_ahead_pool() -> ThreadPoolExecutor:
    global _read_ahead
    with _read_ahead_lock:
        if _read_ahead is None:
            _read_ahead = ThreadPoolExecutor(4, thread_name_prefix="ebscrypt-read-ahead")
        return _read_ahead
# Staged blocks older than this are published even without a FLUSH (as a kernel writes
# back dirty pages after a while): it bounds what a crash of an idle volume loses, and
# keeps staged objects far younger than the orphan sweep's age limit of other processes.
PUBLISH_AGE = 30.0
# Staged blocks at which a direct whole-block write starts a background publication (64 MiB).
PUBLISH_EARLY_BLOCKS = 128
log = logging.getLogger("ebscrypt.attach")


class VolumeClosed(Exception):
    """The volume was detached (or its instance stopped) while a request was in flight."""


class ReadOnly(Exception):
    """A write, trim or write-zeroes to a read-only export (a snapshot)."""


class OpenVolume:
    """One attached volume's data key (in memory only) and block cache. Thread-safe."""

    def __init__(self, blocks: Any, volume_id: str, size_gib: int, key: DataKey | None, *,
                 account: str, instance_id: str, cache_blocks: int = 64,
                 flusher: ThreadPoolExecutor | None = None, read_only: bool = False,
                 journal_path: Path | None = None, journal_bytes: int = 256 << 20) -> None:
        self.blocks = blocks
        self.read_only = read_only  # a snapshot's blocks: nothing is ever written
        self.volume_id = volume_id
        self.size = size_gib * GIB
        self.account = account
        self.instance_id = instance_id
        self._key = key
        self._cache: OrderedDict[int, bytearray] = OrderedDict()
        self._dirty: set[int] = set()
        self._cache_blocks = max(4, cache_blocks)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # Evicted dirty blocks being written in the background (write-behind), by index: at
        # most one store per block at a time; reads find them here until they are stored.
        self._storing: dict[int, bytes | bytearray] = {}
        self._behind_limit = max(2, self._cache_blocks // 2)
        self._draining = 0  # flushes waiting for the writes behind to finish
        self._flusher = flusher
        self._refs: OrderedDict[int, Any] = OrderedDict()  # index -> BlockRef | None (where it is stored)
        self._ref_limit = 64 * self._cache_blocks
        # Checked headers of the objects random reads went to (BlockEngine.open_ref_range):
        # a known object costs one read of its sectors. Bounded; dropped at close (an
        # encrypted object's reader holds its subkey).
        self._readers: OrderedDict[str, Any] = OrderedDict()
        self._reader_limit = max(1024, 16 * self._cache_blocks)
        # Evicted blocks staged (written, not durable, not recorded) awaiting publication, by
        # index: the latest staged content of each. Bounded: published early at the limit,
        # and operations wait beyond twice the limit (a publication in flight).
        self._unpublished: dict[int, StagedBlock] = {}
        self._unpublished_since: float | None = None  # time.monotonic() of the oldest
        self._publish_limit = max(8, 4 * self._cache_blocks)
        # Direct whole-block writes (a sequential writer) start a background publication
        # sooner, at this many staged blocks: the objects a publication supersedes are
        # recycled (their files' pages reused) only once it has committed, and a first pass
        # over a volume written before otherwise wrote ``_publish_limit`` blocks (512 MiB)
        # into fresh files — new page-cache pages and inodes, the largest cost of that pass
        # (bench/README.md S7). Operations still wait only beyond twice ``_publish_limit``.
        self._publish_early = PUBLISH_EARLY_BLOCKS
        self._publishing = 0  # publications in flight outside the lock (at most one)
        self._read_next = -2  # the block after the last read (sequential reads read ahead)
        # The current pass of (roughly) ascending reads: its first block and the block after
        # the furthest read (_note_run); a pass longer than _stream_run streams (read).
        self._run_start = self._run_end = 0
        self._stream_run = self._cache_blocks
        self._advised = 0  # the block after the last a stream's read-ahead advised (_stream_ahead)
        self._streams = threading.Semaphore(STREAM_READERS)
        self._adjacent = False  # the last read began in the block of the one before, or the next
        # Blocks being loaded outside the lock, by index: the claim's token (_claim).
        self._loading: dict[int, object] = {}
        self._readahead = max(1, self._cache_blocks // 8)
        self.direct_writes = 0  # writes staged straight from the request (_write_direct; tests)
        # Requests its NBD connections received (counted by the NBD server; approximate: no
        # lock, any change is activity): the attach engine gives the allocator's free
        # memory back only once every volume has been quiet for a while (heap.IdleTrim).
        self.activity = 0
        self.closed = False
        # A journal whose durable records fail authentication: every operation raises it
        # (nothing is dropped silently; the journal file is kept as it is).
        self._failed: BaseException | None = None
        self._journal: VolumeJournal | None = None
        # A full journal is merged outside the lock (``_merge_frozen``, a thread of its own)
        # while a new one takes writes. Meanwhile every registration of a block's stored
        # content notes its capture (``_epoch``, a counter bumped at each capture) in
        # ``_captures``, so a content captured earlier never replaces one captured later.
        self._merge_running = False
        self._epoch = 0
        self._captures: dict[int, int] | None = None
        if journal_path is not None and not read_only:
            journal = VolumeJournal(journal_path, volume_id, key, max_bytes=journal_bytes,
                                    max_records=max(64, journal_bytes // 4096))
            try:
                # (a crash left it: what still applies, re-sealed into one new journal)
                journal.open(lambda marked: {i: (r.object_key if r is not None else None)
                                             for i, r in blocks.block_refs(volume_id, marked).items()})
                if journal.replayed:
                    log.warning("%s: %d journaled writes left by a crash replayed", volume_id, journal.replayed)
                self._journal = journal
            except Exception as exc:
                log.error("%s: the write journal %s cannot be used: %r", volume_id, journal_path, exc)
                self._failed = exc
                journal.close()
                self._journal = None

    @property
    def encrypted(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:  # never the key
        return f"OpenVolume({self.volume_id}, {self.size} bytes, encrypted={self.encrypted})"

    # ------------------------------------------------------------------ requests

    def check_range(self, offset: int, length: int) -> bool:
        return offset >= 0 and length >= 0 and offset + length <= self.size

    def read(self, offset: int, length: int) -> bytes | bytearray:
        """The bytes [offset, offset+length) (a new buffer: the caller may keep it)."""
        out = bytearray(length)
        spans = list(_spans(offset, length))
        if not spans:
            return b""
        first, last = spans[0][0], spans[-1][0]
        parts: list[_Part] | None = None
        upcoming: list[str] = []  # objects a stream reads next (advised to the kernel)
        with self._lock:
            self._wait_behind()
            self._check_open()
            missing = [i for i in range(first, last + 1) if i not in self._cache]
            # Sequential: in the block the last read ended in or the next, and large or the
            # second such read in a row (a random small read lands next to the previous one
            # now and then: it must not load a block and a read-ahead window).
            adjacent = first in (self._read_next, self._read_next - 1)
            sequential = adjacent and (length >= SEQUENTIAL_MIN or self._adjacent)
            self._read_next, self._adjacent = last + 1, adjacent
            # A sequential pass longer than the cache streams: loaded whole into the cache,
            # its blocks would only push out each other (and what the cache held) before
            # any is read again, at the cost of a fresh 512 KiB buffer, a copy and a
            # read-ahead hand-off per block (section N of bench/README.md).
            streaming = self._note_run(first, last) > self._stream_run and length >= SEQUENTIAL_MIN
            if missing and (not sequential or streaming):
                # A random read (or a stream): only its sectors, the cache left as it is (a
                # whole block read and decrypted for 4 KiB of it is what a miss cost
                # before); read outside the lock, like the loads below.
                parts = self._plan_parts(spans, out)
                key = self._key
                upcoming = self._stream_ahead(last) if streaming else []
        if parts is not None:
            advise: Any = getattr(self.blocks.store, "advise", None)  # (a local store's)
            if advise is not None:
                for name in upcoming:
                    advise(name)  # the stream's read-ahead: the kernel's, in the background
            if not streaming:
                self._read_parts(parts, out, key)
                return out
            # A client's queue of sequential reads is served by several threads, and the
            # checks (GCM, BLAKE3 of 16 KiB sectors) hold the GIL: more than a few at once
            # only contend for it (8 threads cost 1.3-1.5x the CPU per MiB of 3: section N).
            with self._streams:
                self._read_parts(parts, out, key, keep=False)
            return out
        with self._lock:
            self._check_open()
            missing = [i for i in range(first, last + 1) if i not in self._cache]
            ahead: list[int] = []
            if sequential:  # read ahead, in batches: refill the window when its first half has been read
                window = range(last + 1, min(last + 1 + self._readahead, self.size // BLOCK_SIZE))
                if missing or (len(window) > 1 and window[len(window) // 2] not in self._cache):
                    ahead = [i for i in window if i not in self._cache]
            key = self._key
            mine = self._claim(missing)
            behind = self._claim(ahead)
        # Blocks are read and opened outside the lock (claimed, so no one else loads them):
        # requests the cache answers go on meanwhile, and other readers' loads run beside
        # this one (SHA-256 releases the GIL). The read-ahead goes to the background.
        if behind:
            if self._flusher is not None:  # (a volume with a write-behind pool is a served one)
                items = list(behind.items())
                for pos in range(0, len(items), READ_AHEAD_TASK):
                    _read_ahead_pool().submit(self._load_claimed, dict(items[pos:pos + READ_AHEAD_TASK]), key, False)
            else:
                self._load_claimed(behind, key, False)
        if mine:
            self._load_claimed(mine, key, True)
        with self._lock:
            self._check_open()
            while any(i in self._loading and i not in self._cache for i in range(first, last + 1)):
                self._cond.wait()  # loaded by another reader (or its read-ahead): wait for it
                self._check_open()
            pos = 0
            for index, start, end in spans:
                # (_block loads a block evicted or rewritten meanwhile: rare)
                out[pos:pos + end - start] = memoryview(self._block(index))[start:end]
                pos += end - start
        return out

    def _stream_ahead(self, last: int) -> list[str]:
        """(Locked) The objects of the read-ahead window after block ``last`` of a stream not
        advised yet (where they are known: stored or staged, not cached): for the kernel to
        read in the background (``advise``), as the loads of a shorter pass read ahead."""
        start = max(last + 1, self._advised)
        stop = min(last + 1 + self._readahead, self.size // BLOCK_SIZE)
        if start >= stop:
            return []
        self._advised = stop
        names = []
        for i in range(start, stop):
            if i in self._cache or i in self._storing:
                continue
            staged = self._unpublished.get(i)
            ref = staged.ref if staged is not None else self._refs.get(i)
            if ref is not None and ref.object_key is not None:
                names.append(ref.object_key)
        return names

    def _note_run(self, first: int, last: int) -> int:
        """(Locked) Note a read of blocks first..last in the current pass, or begin a new
        pass there; how many blocks the pass spans. A pass tolerates reads up to
        ``RUN_SLACK`` blocks out of order (a client's queue of sequential reads is served
        by several threads, which take the volume's lock in any order)."""
        if self._run_start <= first <= self._run_end + RUN_SLACK:
            self._run_end = max(self._run_end, last + 1)
        else:
            self._run_start, self._run_end = first, last + 1
            self._advised = 0
        return self._run_end - self._run_start

    def _claim(self, indexes: list[int]) -> dict[int, _Claim]:
        """Under the lock: claim these blocks for a load outside it (those neither cached
        nor being loaded already), each with a token and where its latest content is: a
        block being written behind (bytes), a stored entry (BlockRef), None (never
        written) or _UNKNOWN; with the journal's records of the block as of now (held, to
        be overlaid outside the lock too), its sequence number and file. A write to a
        claimed block takes the claim back (``_put``)."""
        indexes = [i for i in indexes if i not in self._cache and i not in self._loading]
        unknown = [i for i in indexes if i not in self._refs and i not in self._storing and i not in self._unpublished]
        if unknown:
            for i, ref in self.blocks.block_refs(self.volume_id, unknown).items():
                self._remember(i, ref)
        claimed: dict[int, _Claim] = {}
        journal = self._journal
        position, resets = (journal.position(), journal.resets) if journal is not None else ({}, 0)
        for i in indexes:
            token = object()
            self._loading[i] = token
            source: Any = self._storing.get(i)
            staged = self._unpublished.get(i)
            if source is None and staged is not None:
                source = staged.ref  # written, not yet published: newer than its entry
            elif source is None:
                source = self._refs.get(i, _UNKNOWN)
                if source is not _UNKNOWN:
                    self._refs.move_to_end(i)
            records = journal.hold(i) if journal is not None and journal.has(i) else None
            claimed[i] = (token, source, records, position, resets)
        return claimed

    def _load_claimed(self, claimed: dict[int, _Claim], key: DataKey | None, raise_errors: bool) -> None:
        """Outside the lock: read and open claimed blocks and overlay the journal records
        taken with the claim, then insert those whose claim still holds (not rewritten,
        nor merged, nor the volume closed, meanwhile), with the records appended since.
        An error is raised to the reader that needs the block (a read-ahead's is dropped:
        whoever reads the block later loads it again and gets it)."""
        loaded: dict[int, bytearray] = {}
        error: BaseException | None = None
        try:
            for index, claim in claimed.items():
                try:
                    loaded[index] = self._load_one(index, claim, key)
                except BaseException as exc:
                    error = error or exc
        finally:
            for claim in claimed.values():
                if claim[2] is not None:
                    claim[2].release()
        with self._cond:
            try:
                for index, (token, _source, _records, position, resets) in claimed.items():
                    if self._loading.get(index) is not token:
                        continue  # written meanwhile: the cache has newer bytes
                    del self._loading[index]
                    data = loaded.get(index)
                    if data is None or self.closed or index in self._cache:
                        continue
                    journal = self._journal
                    if journal is not None:
                        if journal.resets != resets:
                            continue  # merged under the lock meanwhile (its claim is taken back then too)
                        # The records appended since the claim, in either journal (a rotation
                        # since: the frozen one's after the claim, then all of the new one's).
                        # A merge that registered this block since took the claim back.
                        try:
                            journal.overlay_since(index, data, position)
                        except BaseException as exc:  # (a record altered: not inserted, raised below)
                            error = error or exc
                            continue
                    self._insert(index, data)
            finally:
                # (every claim let go, whatever failed: readers waiting for these blocks
                # load them themselves, and get the error)
                for index, claim in claimed.items():
                    if self._loading.get(index) is claim[0]:
                        del self._loading[index]
                self._cond.notify_all()
        if error is not None and raise_errors:
            raise error

    def _load_one(self, index: int, claim: _Claim, key: DataKey | None) -> bytearray:
        """(Outside the lock) One claimed block, with the records taken with its claim."""
        _token, source, records, _position, _resets = claim
        if isinstance(source, (bytes, bytearray)):  # being written behind (a buffer that left the cache)
            block = bytearray(source)
        elif source is None:
            block = bytearray(BLOCK_SIZE)
        elif source is _UNKNOWN:
            block = bytearray(self.blocks.read_block(self.volume_id, index, key))
        else:
            try:
                block = self.blocks.load_ref(source, key)
            except ObjectMissing:  # the lineage changed under us (compaction): look again
                block = bytearray(self.blocks.read_block(self.volume_id, index, key))
        if records is not None:
            records.overlay(block)
        return block

    # Fast paths, for the NBD server's event loop: a request that needs no disk, no crypto
    # and no wait (its blocks are cached, the volume's lock is free) is served there at
    # once, without a hop to a worker thread; anything else returns None and goes the
    # blocking way (read/write above and below). The result is the same either way.

    def try_read(self, offset: int, length: int) -> bytes | bytearray | None:
        """The bytes [offset, offset+length) if they can be served at once (as
        :meth:`try_read_into`: an answer of its own, made only once the read is served),
        else None (the blocking way: :meth:`read`)."""
        served = self._try_read(offset, length, None)
        return served if isinstance(served, bytearray) else None  # (one of its own when served)

    def try_read_into(self, offset: int, dest: memoryview) -> bool:
        """The bytes [offset, offset+len(dest)) into ``dest`` if nothing has to wait: True;
        False: nothing served (``dest`` may hold unchecked bytes: the caller drops them and
        reads the blocking way). A read of cached blocks is copied from the cache; a small
        random miss is read from its sectors (:meth:`_try_read_sectors`). One lock taken,
        without waiting; the NBD connection's thread calls it for every small READ, its
        reply's buffer as ``dest`` (no answer of its own, no copy of one)."""
        return self._try_read(offset, len(dest), dest) is not None

    def _try_read(self, offset: int, length: int, dest: memoryview | None) -> bytearray | memoryview | None:
        """:meth:`try_read_into` (``dest``, returned if served) or :meth:`try_read` (None: a
        buffer of its own, returned if served; a large one made only once the cache is
        known to serve it: a sequential reader's misses allocate nothing here)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self.closed or self._busy():
                return None
            return self._try_read_locked(offset, length, dest)
        finally:
            self._lock.release()

    def try_read_batch_into(self, reads: list[tuple[int, memoryview]]) -> int:
        """:meth:`try_read_into` of several reads, in order, the lock taken once: how many
        of them, from the first, were served (their bytes in their ``dest``). The first
        not served (its ``dest`` may hold unchecked bytes: dropped) ends the batch; it and
        those after it go the general way. An NBD connection's queue of small READs (one
        receive brings many): the lock, the volume's state checks and the engine's hot
        read's set-up once a queue rather than once a read. The usual case — a single
        block neither cached, journaled nor being written behind, its object known — is
        planned here inline; any other read goes the way of :meth:`try_read_into`."""
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            if self.closed or self._busy():
                return 0
            cache, storing, staged, refs = self._cache, self._storing, self._unpublished, self._refs
            # (the blocks with journal records, active and frozen journal: fixed while the lock is held)
            recorded, frozen = self._journal.blocks_with_records() if self._journal is not None else ((), ())
            hot = self.blocks.hot_reads(self._key, self._readers)
            served = 0
            for offset, dest in reads:
                index, start = divmod(offset, BLOCK_SIZE)
                length = len(dest)
                # (a miss on the connection's thread as _try_read_sectors serves it, without
                # its journal lookups — the block has no records — nor its calls)
                simple = (0 < length <= INLINE_MISS_MAX and start + length <= BLOCK_SIZE and index not in cache
                          and index not in storing and index not in recorded and index not in frozen)
                if not simple:
                    if self._try_read_locked(offset, length, dest) is None:
                        break
                    served += 1
                    continue
                adjacent = index in (self._read_next, self._read_next - 1)
                if adjacent and (length >= SEQUENTIAL_MIN or self._adjacent):
                    break  # sequential: whole blocks are loaded (read)
                stage = staged.get(index)
                ref = stage.ref if stage is not None else refs.get(index, _UNKNOWN)
                if ref is _UNKNOWN:
                    break
                try:
                    if not hot(ref, start, dest):
                        break
                except Exception:  # e.g. a tampered sector: the blocking way reads it again and answers the error
                    break
                if stage is None:
                    refs.move_to_end(index)
                self._read_next, self._adjacent = index + 1, adjacent
                self._note_run(index, index)
                served += 1
            return served
        finally:
            self._lock.release()

    def _try_read_locked(self, offset: int, length: int, dest: memoryview | None
                         ) -> bytearray | memoryview | None:
        """(:meth:`_try_read`, the lock held and the volume neither closed nor busy)"""
        owned: bytearray | None = None
        if dest is None and length <= INLINE_MISS_MAX:
            owned = bytearray(length)
            dest = memoryview(owned)
        if length == 0:
            return owned if owned is not None else dest
        cache = self._cache
        first, last = offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE
        if first == last and first not in cache:
            if dest is None or not self._try_read_sectors(first, offset - first * BLOCK_SIZE, dest):
                return None  # (a miss too large to be served here, or one that must wait)
            return owned if owned is not None else dest
        for index in range(first, last + 1):
            if index not in cache:
                return None
        adjacent = first in (self._read_next, self._read_next - 1)
        if adjacent and (length >= SEQUENTIAL_MIN or self._adjacent):  # sequential (as read): read-ahead due?
            ahead = range(last + 1, min(last + 1 + self._readahead, self.size // BLOCK_SIZE))
            if len(ahead) > 1 and ahead[len(ahead) // 2] not in cache:
                return None
        self._read_next, self._adjacent = last + 1, adjacent
        self._note_run(first, last)
        if dest is None:
            owned = bytearray(length)
            dest = memoryview(owned)
        pos = 0
        for index, start, end in _spans(offset, length):
            cache.move_to_end(index)
            # (a copy, under the lock: the block may change once we let go)
            dest[pos:pos + end - start] = memoryview(cache[index])[start:end]
            pos += end - start
        return owned if owned is not None else dest

    def _try_read_sectors(self, index: int, start: int, dest: memoryview) -> bool:
        """(try_read_into, lock held) A small random read of one block the cache lacks,
        served at once if nothing has to wait: the block's entry and its object's checked
        header known, its sectors and the journal records over them in the page cache
        (RWF_NOWAIT); nothing stored is read where records cover the whole range. False:
        the blocking way."""
        length = len(dest)
        if length > INLINE_MISS_MAX or index in self._storing:
            return False
        adjacent = index in (self._read_next, self._read_next - 1)
        if adjacent and (length >= SEQUENTIAL_MIN or self._adjacent):
            return False  # sequential: whole blocks are loaded (read)
        journal = self._journal
        # (both journals' records over the range: the frozen one's, then the active one's)
        found = journal.extents(index, start, start + length) if journal is not None else []
        staged = self._unpublished.get(index)
        ref = staged.ref if staged is not None else self._refs.get(index, _UNKNOWN)
        try:
            if found and covers([e for _j, exts in found for e in exts], start, start + length):
                dest[:] = bytes(length)  # the records hold every byte asked for
            elif ref is _UNKNOWN or not self.blocks.try_open_ref_into(ref, self._key, start, dest, self._readers):
                return False
            for j, extents in found:
                if not j.overlay(index, dest, start, nowait=True, extents=extents):
                    return False
        except Exception:  # e.g. a tampered sector: the blocking way reads it again and answers the error
            return False
        if staged is None and ref is not _UNKNOWN:
            self._refs.move_to_end(index)
        self._read_next, self._adjacent = index + 1, adjacent
        self._note_run(index, index)
        return True

    def try_write(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """True when applied (as :meth:`write` without FUA would have); False: nothing done."""
        if self.read_only or not self._lock.acquire(blocking=False):
            return False
        try:
            if self.closed or self._busy():
                return False
            cache = self._cache
            journal = self._journal
            index, start = divmod(offset, BLOCK_SIZE)
            block = cache.get(index)
            if (block is not None and start + len(data) <= BLOCK_SIZE and len(data)
                    and (journal is None or not journal.has(index))):
                block[start:start + len(data)] = data  # the common case: within one cached block
                self._dirty.add(index)
                cache.move_to_end(index)
                return True
            spans = list(_spans(offset, len(data)))
            if journal is not None and journal.full:
                return False  # the journal is merged first: disk and crypto
            added = 0
            for index, start, end in spans:
                if journal is not None and self._journaled(index, start, end):
                    continue  # appended to the journal: nothing to read, nothing cached
                if index not in cache:
                    if not (start == 0 and end == BLOCK_SIZE):
                        return False  # read-modify-write of a block not cached: disk and crypto
                    added += 1
            if len(cache) + added > self._cache_blocks:
                return False  # would evict (maybe a block this very write goes on to patch)
            self._apply_write(spans, memoryview(data))
            return True
        finally:
            self._lock.release()

    def write(self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False) -> None:
        view = memoryview(data)
        if self.read_only:
            raise ReadOnly(self.volume_id)
        if len(view) >= BLOCK_SIZE and self._write_direct(offset, view, fua):
            return
        with self._lock:
            self._wait_behind()
            self._check_open()
            spans = list(_spans(offset, len(view)))
            journaled = self._apply_write(spans, view)
            if fua and journaled and self._journal is not None:
                self._journal.sync()  # this write is all in the journal
            if fua and not journaled:
                self._flush_locked()
            if self._journal is not None and self._journal.full:
                self._rotate()

    def _write_direct(self, offset: int, view: memoryview, fua: bool) -> bool:
        """A write of whole blocks the cache does not hold (a sequential writer beyond the
        cache): sealed and staged straight from the request's buffer, outside the lock —
        no copy into the cache, no eviction of the blocks written before, several requests
        sealing and writing at once — then registered as the blocks' latest content under
        the lock (as a write-behind's; published at the next FLUSH/FUA or at the bound).
        False: not such a write (nothing done; the caller takes the usual path)."""
        if offset % BLOCK_SIZE or len(view) % BLOCK_SIZE:
            return False
        first = offset // BLOCK_SIZE
        indexes = list(range(first, first + len(view) // BLOCK_SIZE))
        with self._lock:
            self._wait_behind()
            self._check_open()
            journal = self._journal
            if (journal is not None and journal.full) or any(i in self._cache or i in self._storing for i in indexes):
                # The cache's (one content per block at a time), or the journal is to rotate.
                # (Blocks with journal records are fine: this write covers them, as below;
                # so is a merge of a frozen journal: this registration is the later capture,
                # and the merge publishes what is registered before deleting the journal.)
                return False
        jobs: list[tuple[int, bytes | bytearray | memoryview]] = []
        for n, index in enumerate(indexes):
            block = view[n * BLOCK_SIZE:(n + 1) * BLOCK_SIZE]
            if is_zero_block(block):
                return False  # zeros: recorded without an object (the usual path knows when)
            jobs.append((index, block))
        # Every block gets an object, even if a journaled write to it came meanwhile (its mark
        # needs one). Sealed in this thread: each NBD request has its own.
        staged = self.blocks.stage_blocks(self.volume_id, jobs, self._key, zero_objects=indexes)
        with self._cond:
            # A write-behind of one of these blocks (cached and evicted meanwhile, with content
            # captured before this write's) registers first: this write is the later one.
            while any(i in self._storing for i in indexes) and not self.closed:
                self._cond.wait()
            if self.closed or self._failed is not None:
                self.blocks.discard_staged(staged)
                self._check_open()
            journal = self._journal
            for index in indexes:
                # Whatever reached the block meanwhile (a cached partial write, journaled
                # records) is ordered before this write, which covers it all.
                self._cache.pop(index, None)
                self._dirty.discard(index)
                if journal is not None and journal.has(index):
                    journal.leave(index)
            self._epoch += 1
            self._register(staged, journal.position() if journal is not None else {}, self._epoch)
            self.direct_writes += 1
            if fua:
                self._flush_locked()
            elif (len(self._unpublished) >= min(self._publish_early, self._publish_limit) and not self._publishing
                  and not self._draining and self._flusher is not None):
                self._start_publish_behind()
            elif len(self._unpublished) >= self._publish_limit and self._flusher is None:
                self._publish_locked()
            self._cond.notify_all()
        return True

    def _journaled(self, index: int, start: int, end: int) -> bool:
        """(Locked) Does a write of [start, end) of block ``index`` go to the journal? Yes
        for a block that has records (until the merge), and for a part of a block the
        cache does not hold (no read-modify-write)."""
        journal = self._journal
        if journal is None or (start == 0 and end == BLOCK_SIZE):
            return False  # a whole block goes to the cache (and leaves the journal)
        return journal.has(index) or index not in self._cache

    def _apply_write(self, spans: list[tuple[int, int, int]], view: memoryview) -> bool:
        """(Locked) Apply a write: journaled parts appended (and patched into a cached
        copy, which stays clean: the journal holds them), the others into the cache
        (dirty; partial ones read first). True if every part was journaled."""
        pos = 0
        journaled = True
        for index, start, end in spans:
            part = view[pos:pos + end - start]
            pos += end - start
            if self._journaled(index, start, end):
                assert self._journal is not None
                self._journal.append(index, start, part)
                cached = self._cache.get(index)
                if cached is not None:
                    cached[start:end] = part
                    self._cache.move_to_end(index)
                continue
            journaled = False
            if start == 0 and end == BLOCK_SIZE:
                if self._journal is not None and self._journal.has(index):
                    self._journal.leave(index)  # this content covers its records: cached dirty
                cached = self._cache.get(index)
                if cached is not None:
                    # Over the cached buffer (as a partial write patches it): nothing outside
                    # the lock holds a cached buffer (reads copy from it, a write-behind takes
                    # it out of the cache), and a new 512 KiB buffer per block was fresh
                    # pages to fault in (bench/README.md W6).
                    cached[:] = part
                    self._put(index, cached)
                else:
                    self._put(index, bytearray(part))  # a whole block: nothing to read first
            else:
                block = self._block(index)
                block[start:end] = part
                self._put(index, block)
        return journaled

    def zero(self, offset: int, length: int, *, fua: bool = False) -> None:
        """Trim and write-zeroes: whole blocks are discarded, partial ones zeroed in place."""
        if self.read_only:
            raise ReadOnly(self.volume_id)
        with self._lock:
            self._wait_behind()
            self._check_open()
            spans = list(_spans(offset, length))
            journal = self._journal
            # Whole blocks that already read as zeros (holes) need nothing: a client zeroing
            # a large sparse volume (nbdcopy does) must not fill the cache with zeros.
            zeros = self._stored_as_zeros([i for i, start, end in spans if start == 0 and end == BLOCK_SIZE
                                           and i not in self._cache and i not in self._storing
                                           and not (journal is not None and journal.has(i))])
            journaled = True
            for index, start, end in spans:
                if journal is not None and (journal.has(index) or (
                        index not in self._cache and not (start == 0 and end == BLOCK_SIZE))):
                    journal.append_zeros(index, start, end - start)
                    cached = self._cache.get(index)
                    if cached is not None:
                        cached[start:end] = bytes(end - start)
                    continue
                journaled = False
                if start == 0 and end == BLOCK_SIZE:
                    cached = self._cache.get(index)
                    if cached is not None and index not in self._dirty and is_zero_block(cached):
                        continue  # cached clean as stored, and zeros already
                    if index not in zeros:
                        self._put(index, bytearray(BLOCK_SIZE))
                else:
                    block = self._block(index)
                    block[start:end] = bytes(end - start)
                    self._put(index, block)
            if fua and journaled and journal is not None:
                journal.sync()
            if fua and not journaled:
                self._flush_locked()
            if journal is not None and journal.full:
                self._rotate()

    def allocation(self, offset: int, length: int, max_blocks: int = 1024) -> list[tuple[int, int]]:
        """``base:allocation`` of [offset, offset+length), as (length, hole) runs from
        ``offset`` on, merged; at most ``max_blocks`` blocks are looked at (the client asks
        again for the rest). A hole is a block never written here nor in the snapshot the
        volume came from, or trimmed (a zero entry): it reads as zeros. Blocks cached or
        being written are data."""
        spans = list(_spans(offset, length))[:max_blocks]
        if not spans:
            return []
        indexes = [i for i, _s, _e in spans]
        with self._lock:
            self._check_open()
            journal = self._journal
            busy = {i for i in indexes if i in self._dirty or i in self._storing
                    or (journal is not None and journal.has(i))}
            staged = {i: s.ref for i in indexes if i not in busy and (s := self._unpublished.get(i)) is not None}
        wanted = [i for i in indexes if i not in busy and i not in staged]
        refs: dict[int, Any] = self.blocks.block_refs(self.volume_id, wanted)
        refs.update(staged)
        runs: list[tuple[int, int]] = []
        for index, start, end in spans:
            ref = refs.get(index)
            hole = index not in busy and (ref is None or ref.object_key is None)
            if runs and bool(runs[-1][1]) == hole:
                runs[-1] = (runs[-1][0] + end - start, runs[-1][1])
            else:
                runs.append((end - start, int(hole)))
        return runs

    def flush(self) -> None:
        """Every write acknowledged so far is durable when this returns."""
        if self.read_only:
            return
        with self._lock:
            self._check_open()
            self._flush_locked()

    @contextmanager
    def quiesced(self) -> Iterator[None]:
        """Flushed and held still: no write is applied until the block exits (R-ATTACH-4:
        a snapshot taken inside holds every acknowledged write and none issued later)."""
        with self._lock:
            if not self.closed:
                self._check_open()
                if self._journal is not None:
                    self._settle_merge()  # a full journal being merged: its end first
                if self._journal is not None and len(self._journal):
                    self._merge_locked()  # the snapshot reads stored blocks: the journal goes into them
                else:
                    self._flush_locked()
            yield

    def close(self) -> None:
        """Flush, then drop the cache and the data key (detach, stop, shutdown)."""
        with self._lock:
            if self.closed:
                return
            try:
                if self._journal is not None:
                    self._settle_merge(failed_ok=True)
                if self._failed is not None:
                    raise self._failed  # its journal is left as it is, for whoever looks at it
                if self._journal is not None:
                    self._merge_locked()
                    self._journal.remove()  # merged: nothing left in it
                    self._journal = None
                else:
                    self._flush_locked()
            finally:
                if self._journal is not None:
                    self._journal.close()
                    self._journal = None
                self.closed = True
                self._cache.clear()
                self._dirty.clear()
                self._readers.clear()
                self._key = None
                if self._unpublished:  # the flush failed: never to be published
                    self.blocks.discard_staged([st for st in self._unpublished.values() if not st.publishing])
                    self._unpublished.clear()

    # ------------------------------------------------------------------ cache

    def _check_open(self) -> None:
        if self.closed:
            raise VolumeClosed(self.volume_id)
        if self._failed is not None:
            raise self._failed

    def _wait_behind(self) -> None:
        """Before an operation: wait while too much is being written behind (bounds memory).
        Only here, never mid-operation, so nothing read before a wait is used after it."""
        while self._busy():
            if (len(self._unpublished) > 2 * self._publish_limit and not self._publishing
                    and not self._draining):
                # Staged past the bound while a publication ran (writes registered meanwhile,
                # or superseded ones left staged): nothing else starts the next one — the
                # writes that would are the ones waiting here.
                if self._flusher is not None:
                    self._start_publish_behind()
                else:
                    self._publish_locked()
                continue
            self._cond.wait()

    def _busy(self) -> bool:
        return bool(self._draining or len(self._storing) > self._behind_limit
                    or len(self._unpublished) > 2 * self._publish_limit
                    # (the new journal filled up before the old one was merged: rare)
                    or (self._merge_running and self._journal is not None and self._journal.full))

    def _block(self, index: int) -> bytearray:
        block = self._cache.get(index)
        if block is not None:
            self._cache.move_to_end(index)
            return block
        self._load([index])
        return self._cache[index]

    def _load(self, indexes: list[int]) -> None:
        """Bring these blocks into the cache. Where each is stored is remembered (a bounded
        map of entries, looked up many at once): a block evicted and read again costs one
        object read and one decryption, not a lineage lookup."""
        unknown = [i for i in indexes if i not in self._refs and i not in self._storing and i not in self._unpublished]
        if unknown:
            for i, ref in self.blocks.block_refs(self.volume_id, unknown).items():
                self._remember(i, ref)
        for index in indexes:
            data = self._stored(index)
            if index not in self._cache:
                block = bytearray(data)
                if self._journal is not None:
                    self._journal.overlay(index, block)  # cached clean: the journal holds these writes
                self._insert(index, block)

    def _latest(self, index: int) -> Any:
        """(Locked) Where block ``index``'s latest content is, the cache aside: the buffer
        being written behind, the entry of its staged (written, not yet published) or
        recorded object, or None (never written, here or in the lineage)."""
        behind = self._storing.get(index)
        if behind is not None:
            return behind
        staged = self._unpublished.get(index)
        if staged is not None:
            return staged.ref
        if index not in self._refs:
            self._remember(index, self.blocks.block_refs(self.volume_id, [index])[index])
        ref = self._refs.get(index)
        if ref is not None:
            self._refs.move_to_end(index)
        return ref

    def _stored(self, index: int) -> bytes | bytearray:
        """(Locked) The block as the store has it for this volume (journal records not
        applied): being written behind, staged, recorded, or zeros."""
        source = self._latest(index)
        if source is None:
            return ZERO_BLOCK
        if isinstance(source, (bytes, bytearray)):
            return source
        try:
            data: bytes = self.blocks.open_ref(source, self._key)
            return data
        except ObjectMissing:  # the lineage changed under us (compaction): look again
            self._refs.pop(index, None)
            fresh: bytes = self.blocks.read_block(self.volume_id, index, self._key)
            return fresh

    def _plan_parts(self, spans: list[tuple[int, int, int]], out: bytearray) -> list[_Part]:
        """Under the lock: copy into ``out`` the spans the cache (or a block being written
        behind) holds; the others as (position in out, block, start, length, source,
        records) for :meth:`_read_parts` (source: a BlockRef, None — never written, or
        nothing to read under records covering the span —, _UNKNOWN, or the buffer of a
        block being written behind; records: the journal's records over the span, held,
        and their file, or None)."""
        self._learn_refs([i for i, _s, _e in spans if i not in self._cache and i not in self._storing
                          and i not in self._unpublished and i not in self._refs])
        journal = self._journal
        parts: list[_Part] = []
        pos = 0
        try:
            for index, start, end in spans:
                self._plan_part(parts, journal, out, pos, index, start, end)
                pos += end - start
        except BaseException:
            _release(parts)
            raise
        return parts

    def _plan_part(self, parts: list[_Part], journal: VolumeJournal | None, out: bytearray, pos: int,
                   index: int, start: int, end: int) -> None:
        """(Locked) One span of :meth:`_plan_parts`."""
        n = end - start
        block: bytes | bytearray | None = self._cache.get(index)
        if block is not None:  # (a cached block has its journal records applied)
            self._cache.move_to_end(index)
            out[pos:pos + n] = memoryview(block)[start:end]
        elif journal is not None and journal.has(index):
            # Its journal records overlay what is stored or being written behind. What
            # to read is taken now, under the lock: where the block is and which records
            # of either journal (frozen being merged, active) touch the span; both are
            # read outside it (records never change once written, and a held journal file
            # stays readable after a rotation, a merge's end or a reset; an object gone
            # meanwhile is looked up again). Nothing stored is read where the records
            # cover the whole span (a read of what a small write wrote).
            records = journal.hold(index, start, end)
            source: Any = None if records is not None and records.covers(start, end) else self._latest(index)
            parts.append((pos, index, start, n, source, records))
        elif (behind := self._storing.get(index)) is not None:
            out[pos:pos + n] = memoryview(behind)[start:end]
        else:
            staged = self._unpublished.get(index)
            if staged is not None:
                ref = staged.ref  # written, not yet published: newer than its entry
            else:
                ref = self._refs.get(index, _UNKNOWN)
                if ref is not _UNKNOWN:
                    self._refs.move_to_end(index)
            parts.append((pos, index, start, n, ref, None))

    def _stored_window(self, index: int, start: int, n: int) -> bytearray:
        """(Locked) Bytes [start, start+n) of block ``index`` as this volume has them,
        cache aside: being written behind, staged, recorded or zeros, with the journal's
        records applied; only the sectors covering the window are read."""
        source = self._latest(index)
        if source is None:
            window = bytearray(n)
        elif isinstance(source, (bytes, bytearray)):
            window = bytearray(memoryview(source)[start:start + n])
        else:
            try:
                window = bytearray(self.blocks.open_ref_range(source, self._key, start, n, readers=self._readers))
            except ObjectMissing:  # the lineage changed under us (compaction): look again
                self._refs.pop(index, None)
                window = bytearray(self.blocks.read_sectors(self.volume_id, index, start, n, self._key))
        if self._journal is not None:
            self._journal.overlay(index, window, start)
        return window

    def _read_parts(self, parts: list[_Part], out: bytearray, key: DataKey | None, *, keep: bool = True) -> None:
        """Outside the lock: read the sectors of each part into ``out`` and overlay its
        records. What a part was resolved to under the lock is as of the read's start: a
        write acknowledged before it is seen; one racing it may or may not be (NBD leaves
        concurrent requests unordered); an object collected meanwhile is looked up again.
        ``keep``: keep the objects' descriptors open (False: a sequential stream)."""
        readers = self._readers
        view = memoryview(out)
        try:
            for pos, index, start, n, source, records in parts:
                try:
                    if isinstance(source, (bytes, bytearray)):  # being written behind
                        out[pos:pos + n] = memoryview(source)[start:start + n]
                    elif source is _UNKNOWN:
                        raise ObjectMissing(index)
                    elif source is not None:  # (None: zeros, already in out)
                        # (straight into out: no buffer of its own, nothing copied twice)
                        self.blocks.open_ref_range_into(source, key, start, view[pos:pos + n], readers=readers,
                                                        keep=keep)
                    if records is not None:
                        records.overlay(memoryview(out)[pos:pos + n], start)
                except ObjectMissing:
                    # Compacted, or a staged object superseded (deleted) by a newer content
                    # meanwhile: what the volume holds now, looked up under the lock.
                    with self._lock:
                        self._check_open()
                        out[pos:pos + n] = self._stored_window(index, start, n)
        finally:
            view.release()
            _release(parts)
        while len(readers) > self._reader_limit:  # (each step atomic: readers run concurrently)
            try:
                readers.popitem(last=False)
            except KeyError:
                break

    def _learn_refs(self, indexes: list[int]) -> None:
        """Look up where these blocks are stored, with the rest of their window
        (``REF_WINDOW`` blocks, one range query each): random reads over a volume cost
        one lookup per window, not one per block."""
        last = max(0, (self.size - 1) // BLOCK_SIZE)
        for window in sorted({i // REF_WINDOW for i in indexes}):
            start = window * REF_WINDOW
            stop = min(start + REF_WINDOW, last + 1)
            for i, ref in self.blocks.block_refs_between(self.volume_id, start, stop).items():
                if i not in self._cache and i not in self._storing and i not in self._unpublished:  # (stale entries)
                    self._remember(i, ref)

    def _stored_as_zeros(self, indexes: list[int]) -> set[int]:
        """Of these blocks (none cached or being written), those nothing is stored for:
        never written here nor in the lineage, or a zero entry (trimmed)."""
        out: set[int] = set()
        unknown = []
        for i in indexes:
            staged = self._unpublished.get(i)
            if staged is not None:
                if staged.ref.object_key is None:
                    out.add(i)
            elif i in self._refs:
                ref = self._refs[i]
                if ref is None or ref.object_key is None:
                    out.add(i)
            else:
                unknown.append(i)
        for pos in range(0, len(unknown), 512):  # bounded IN lists
            for i, ref in self.blocks.block_refs(self.volume_id, unknown[pos:pos + 512]).items():
                if ref is None or ref.object_key is None:
                    out.add(i)
        return out

    def _remember(self, index: int, ref: Any) -> None:
        self._refs[index] = ref
        self._refs.move_to_end(index)
        while len(self._refs) > self._ref_limit:
            self._refs.popitem(last=False)

    def _put(self, index: int, block: bytearray) -> None:
        self._loading.pop(index, None)  # a load in flight of the old bytes is dropped
        self._dirty.add(index)
        if index in self._cache:
            self._cache[index] = block
            self._cache.move_to_end(index)
        else:
            self._insert(index, block)

    def _insert(self, index: int, block: bytearray) -> None:
        self._cache[index] = block
        if len(self._cache) > self._cache_blocks:
            # Evict the least recently used quarter at once, so the store sees batches
            # (one group commit) rather than a block at a time. A block whose previous
            # content is still being written stays: one store per block at a time.
            victims = [i for i in self._cache if i not in self._storing][: self._cache_blocks // 4]
            dirty = [i for i in victims if i in self._dirty]
            if self._flusher is not None:
                self._write_behind(dirty)
            else:
                self._stage([(i, bytes(self._cache[i])) for i in dirty])
                if len(self._unpublished) >= self._publish_limit:
                    self._publish_locked()
            for i in victims:
                self._cache.pop(i, None)

    def _write_behind(self, indexes: list[int]) -> None:
        """Store evicted dirty blocks in the background (as one batch: one group commit per
        64 blocks); the caller goes on at once."""
        assert self._flusher is not None
        if not indexes:
            return
        batch: list[tuple[int, bytes | bytearray]] = []
        for i in indexes:
            # No copy: the evicted block's buffer leaves the cache right after (the caller
            # pops it), so nothing changes it while it is sealed and written.
            data = self._cache[i]
            self._storing[i] = data
            self._dirty.discard(i)
            self._refs.pop(i, None)
            batch.append((i, data))
        journal = self._journal
        covered = journal.position() if journal is not None else {}  # what these contents cover of the journals
        marked = {i for i in indexes if journal is not None and journal.touched(i)}
        self._epoch += 1
        self._flusher.submit(self._store_behind, batch, covered, marked, self._epoch)

    def _store_behind(self, batch: list[tuple[int, bytes | bytearray]], covered: Position,
                      marked: frozenset[int] | set[int], epoch: int) -> None:
        error: BaseException | None = None
        staged: list[StagedBlock] = []
        try:
            staged = self.blocks.stage_blocks(self.volume_id, batch, self._key, zero_objects=marked)
        except BaseException as exc:  # kept dirty: the next flush writes them again (and reports)
            error = exc
        with self._cond:
            if error is None and self.closed:  # closed meanwhile (by a failed flush): never published
                self.blocks.discard_staged(staged)
            elif error is None:
                self._register(staged, covered, epoch)
            for index, data in batch:
                if error is not None:
                    if not self.closed:
                        if index not in self._cache:
                            self._cache[index] = bytearray(data)
                        self._dirty.add(index)
                if self._storing.get(index) is data:
                    del self._storing[index]
            if error is not None:
                log.warning("write-behind of %d blocks of %s failed: %s", len(batch), self.volume_id, error)
            publish = (len(self._unpublished) >= self._publish_limit and not self._publishing
                       and not self._draining and not self.closed)
            if publish:
                if self._journal is not None:
                    self._journal.sync()  # the marks of the blocks about to be recorded first
                taken = self._take_unpublished()
            self._cond.notify_all()
        if publish:
            self._publish_behind(taken)

    def _register(self, staged: list[StagedBlock], covered: Position, epoch: int,
                  positions: dict[int, Position] | None = None) -> None:
        """(Locked) These blocks are staged: the latest content of their indexes. A block
        staged before and not taken by a publication in flight is superseded: deleted.
        A block the journal has seen gets its mark (``covered``, or ``positions`` per
        block: the journals' sequence numbers when its content was taken), before any
        publication can record it. ``epoch``: when the contents were captured; while a
        full journal is merged outside the lock, a content captured before the one
        registered last for its block (the merge's, or a write-behind's) is dropped."""
        now = time.monotonic()
        superseded = []
        journal = self._journal
        captures = self._captures
        for s in staged:
            if captures is not None:
                if captures.get(s.index, -1) > epoch:
                    superseded.append(s)  # older than what is registered: never published
                    continue
                captures[s.index] = epoch
            if journal is not None and journal.touched(s.index) and s.ref.object_key is not None:
                journal.mark(s.index, positions[s.index] if positions is not None else covered, s.ref.object_key)
            old = self._unpublished.pop(s.index, None)
            if old is not None and not old.publishing:
                superseded.append(old)
            self._unpublished[s.index] = s
            self._refs.pop(s.index, None)
            self._loading.pop(s.index, None)  # a load in flight of older content is dropped
        if staged and self._unpublished_since is None:
            self._unpublished_since = now
        if superseded:
            self.blocks.discard_staged(superseded)

    def _take_unpublished(self) -> list[StagedBlock]:
        """(Locked) Every staged block, marked as taken by the publication about to run."""
        taken = list(self._unpublished.values())
        for s in taken:
            s.publishing = True
        self._publishing += 1
        return taken

    def _published(self, taken: list[StagedBlock], error: BaseException | None) -> None:
        """(Locked) A publication of ``taken`` ended: on success they are recorded (no longer
        ours to remember, unless superseded meanwhile: that one stays staged)."""
        self._publishing -= 1
        for s in taken:
            s.publishing = False
            if error is None and self._unpublished.get(s.index) is s:
                del self._unpublished[s.index]
                self._remember(s.index, s.ref)
        if error is None:
            self._unpublished_since = time.monotonic() if self._unpublished else None
        self._cond.notify_all()

    def _start_publish_behind(self) -> None:
        """(Locked, a flusher, no publication running) Publish every staged block in the
        background."""
        assert self._flusher is not None
        if self._journal is not None:
            self._journal.sync()  # the marks of the blocks about to be recorded first
        taken = self._take_unpublished()
        try:
            self._flusher.submit(self._publish_behind, taken)  # (outside the lock: I/O goes on)
        except RuntimeError as exc:  # the server is shutting down: the close publishes them
            self._published(taken, exc)

    def _publish_behind(self, taken: list[StagedBlock]) -> None:
        """An early publication (too many staged), outside the lock: operations go on."""
        error: BaseException | None = None
        try:
            self.blocks.publish_blocks(self.volume_id, taken)
        except BaseException as exc:  # they stay staged: the next flush publishes them (and reports)
            error = exc
            log.warning("publishing %d blocks of %s failed: %s", len(taken), self.volume_id, exc)
        with self._cond:
            self._published(taken, error)

    def _publish_locked(self) -> None:
        """(Locked, nothing in flight) Publish every staged block: durable on return."""
        if not self._unpublished:
            return
        if self._journal is not None:
            self._journal.sync()  # the marks of the blocks about to be recorded first
        taken = self._take_unpublished()
        error: BaseException | None = None
        try:
            self.blocks.publish_blocks(self.volume_id, taken)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._published(taken, error)

    def publish_due(self, max_age: float = PUBLISH_AGE) -> None:
        """Publish the staged blocks if the oldest has waited ``max_age`` seconds (periodic)."""
        with self._lock:
            since = self._unpublished_since
            if self.closed or since is None or time.monotonic() - since < max_age:
                return
            self._draining += 1
            try:
                while self._storing or self._publishing:
                    self._cond.wait()
                self._publish_locked()
            finally:
                self._draining -= 1
                self._cond.notify_all()

    def _flush_locked(self) -> None:
        # New operations wait while a flush drains what is being written behind (so it
        # cannot starve under a steady stream of writes); operations never hold the lock
        # across a wait mid-way, so none is half done here.
        self._draining += 1
        try:
            while self._storing or self._publishing:
                self._cond.wait()
            if self._journal is not None:
                self._journal.sync()
            self._stage_dirty(sorted(self._dirty))
            self._publish_locked()
        finally:
            self._draining -= 1
            self._cond.notify_all()

    def _merge_locked(self, *, flush: bool = True) -> None:
        """Merge the journal into whole blocks: each block with records is read once (as
        stored, or as cached), its records applied, and staged; then everything staged is
        published (durable), and only then is the journal replaced by an empty one.
        ``flush``: the dirty cached blocks too (a snapshot, a close: the only callers; a
        full journal is merged outside the lock instead, ``_merge_frozen``)."""
        journal = self._journal
        assert journal is not None
        self._draining += 1
        try:
            while self._storing or self._publishing:
                self._cond.wait()
            indexes = journal.blocks()
            for pos in range(0, len(indexes), 64):  # bounded memory: 64 blocks at a time
                batch = indexes[pos:pos + 64]
                unknown = [i for i in batch if i not in self._cache and i not in self._storing
                           and i not in self._unpublished and i not in self._refs]
                if unknown:  # where each is stored: one lookup (the map of refs is bounded: per batch)
                    for i, ref in self.blocks.block_refs(self.volume_id, unknown).items():
                        self._remember(i, ref)
                sources = [(i, self._source(i)) for i in batch]
                # read, overlaid and sealed in parallel (disk reads and AES-GCM leave the GIL)
                jobs = list(self._map(self._merged, sources))
                self._stage(jobs, parallel=True)
            if flush:
                self._stage_dirty(sorted(self._dirty))
            self._publish_locked()
            journal.reset()
        finally:
            self._draining -= 1
            self._cond.notify_all()

    def _source(self, index: int) -> tuple[str, Any]:
        """(Locked) Where the merge takes block ``index`` from: ("cached", bytes) with its
        records applied already, ("bytes", bytes) being written behind, ("ref", entry)
        staged or recorded, or ("zeros", None)."""
        cached = self._cache.get(index)
        if cached is not None:
            return "cached", bytes(cached)
        source = self._latest(index)  # (looked up by the batch, but the map of refs is bounded)
        if source is None:
            return "zeros", None
        return ("bytes", source) if isinstance(source, (bytes, bytearray)) else ("ref", source)

    def _merged(self, item: tuple[int, tuple[str, Any]]) -> tuple[int, bytes]:
        """(Any thread, while the merge holds the volume's lock) Block ``index`` with its
        records applied."""
        index, (kind, source) = item
        if kind == "cached":
            return index, source
        block = self._merge_base(index, kind, source, self._key)
        assert self._journal is not None
        self._journal.overlay(index, block)
        return index, bytes(block)

    def _merge_base(self, index: int, kind: str, source: Any, key: DataKey | None) -> bytearray:
        """(Any thread) A merge's block ``index`` before its records: zeros, a copy of the
        bytes being written behind, or its stored object ("zeros" / "bytes" / "ref")."""
        if kind == "zeros":
            return bytearray(BLOCK_SIZE)
        if kind == "bytes":
            return bytearray(source)
        try:
            block: bytearray = self.blocks.load_ref(source, key)
            return block
        except ObjectMissing:  # the lineage changed under us (compaction): look again
            return bytearray(self.blocks.read_block(self.volume_id, index, key))

    # A full journal is merged without holding the volume's lock (issue 12): it is frozen
    # and a new one takes writes (VolumeJournal.rotate); a thread reads each block with
    # records once, applies the frozen journal's records, seals and stages it — taking
    # the lock only to pick a batch's sources and to register its blocks — then publishes
    # every staged block and deletes the frozen journal. Reads overlay both journals
    # meanwhile. Only when the new journal fills up too before the merge ends do
    # operations wait (``_busy``). A snapshot or a close waits for the merge, then merges
    # the new journal under the lock as before.

    def _rotate(self) -> None:
        """(Locked) The journal is full: freeze it and merge it (in the background when this
        volume has a write-behind pool; without one, here and now)."""
        journal = self._journal
        assert journal is not None
        if self._merge_running:
            return  # (operations wait in _busy until it ends)
        frozen = journal.merging if journal.merging is not None else journal.rotate()  # (a failed merge: again)
        self._merge_running = True
        self._captures = {}
        if self._flusher is None:
            self._merge_frozen(frozen)
        else:
            threading.Thread(target=self._merge_frozen, args=(frozen,), daemon=True,
                             name=f"ebscrypt-merge-{self.volume_id}").start()

    def _settle_merge(self, *, failed_ok: bool = False) -> None:
        """(Locked) Wait for a background merge to end; a frozen journal a failed merge
        left is merged now (snapshot, close). New operations wait meanwhile."""
        journal = self._journal
        assert journal is not None
        self._draining += 1
        try:
            # (nothing written behind either: the merge below, under the lock, maps its work
            # on the write-behind pool, whose threads must not be waiting for this lock)
            while self._merge_running or self._storing or self._publishing:
                self._cond.wait()
            if journal.merging is not None and not (failed_ok and self._failed is not None):
                self._merge_running = True
                self._captures = {}
                self._merge_frozen(journal.merging, raise_errors=True)
        finally:
            self._draining -= 1
            self._cond.notify_all()

    def _merge_frozen(self, frozen: Journal, raise_errors: bool = False) -> None:
        """Merge the frozen journal into whole blocks (a thread of its own; or with the
        lock held, which is re-entrant, when there is no write-behind pool): see above."""
        error: BaseException | None = None
        try:
            with self._cond:
                self._check_open()
                key = self._key
                touched = frozen.touched_blocks()
            skipped: set[int] = set()
            for pos in range(0, len(touched), 64):  # bounded memory: 64 blocks at a time
                batch = touched[pos:pos + 64]
                with self._cond:
                    self._check_open()
                    sources, positions, epoch = self._merge_sources(frozen, batch)
                skipped.update(set(batch) - set(positions))
                jobs = list(self._map(lambda item: self._merged_frozen(frozen, key, item), sources))
                map_fn = self._flusher.map if self._flusher is not None and len(jobs) > 1 else None
                staged = self.blocks.stage_blocks(self.volume_id, jobs, key, map_fn=map_fn,
                                                  zero_objects={i for i, _d in jobs})
                with self._cond:
                    if self.closed:
                        self.blocks.discard_staged(staged)
                        raise VolumeClosed(self.volume_id)
                    self._register(staged, {}, epoch, positions)
                    for s in staged:
                        frozen.leave(s.index)  # what is registered for it now holds its records
            with self._cond:
                # Blocks skipped (their content holds the frozen journal's records already:
                # written whole since) being written behind are registered first; then every
                # staged block is published, after the marks are durable.
                while self._publishing or any(i in self._storing for i in skipped):
                    self._cond.wait()
                self._check_open()
                assert self._journal is not None
                self._journal.sync()
                taken = self._take_unpublished()
            published: BaseException | None = None
            try:
                self.blocks.publish_blocks(self.volume_id, taken)
            except BaseException as exc:
                published = exc
                raise
            finally:
                with self._cond:
                    self._published(taken, published)
            with self._cond:
                assert self._journal is not None
                self._journal.merged()
        except BaseException as exc:
            error = exc
            if isinstance(exc, JournalIntegrityError):
                self._failed = exc  # a durable record fails authentication: fail loudly
            elif not isinstance(exc, VolumeClosed):
                log.warning("merging the journal of %s failed: %r", self.volume_id, exc)
        finally:
            with self._cond:
                self._merge_running = False
                self._captures = None
                self._cond.notify_all()
        if error is not None and raise_errors:
            raise error

    def _merge_sources(self, frozen: Journal, batch: list[int]
                       ) -> tuple[list[tuple[int, tuple[str, Any]]], dict[int, Position], int]:
        """(Locked) What the merge stages for these blocks of the frozen journal, and what
        each covers of the journals: a cached copy (every record applied, and whatever
        was written since: covers both journals as of now), else the latest stored
        content with the frozen journal's records to apply (covers the frozen journal
        only: the new one's records are overlaid on it, on reads and at replay). A block
        neither cached dirty nor with records left (written whole since) is skipped."""
        assert self._journal is not None
        unknown = [i for i in batch if i not in self._cache and i not in self._storing
                   and i not in self._unpublished and i not in self._refs and frozen.has(i)]
        if unknown:  # where each is stored: one lookup
            for i, ref in self.blocks.block_refs(self.volume_id, unknown).items():
                self._remember(i, ref)
        self._epoch += 1
        now = self._journal.position()
        only_frozen = {frozen.jid: frozen.seq}
        sources: list[tuple[int, tuple[str, Any]]] = []
        positions: dict[int, Position] = {}
        for i in batch:
            cached = self._cache.get(i)
            if cached is not None:
                if not (frozen.has(i) or i in self._dirty):
                    continue
                sources.append((i, ("cached", bytes(cached))))
                positions[i] = now
            elif frozen.has(i):
                source = self._latest(i)
                if source is None:
                    sources.append((i, ("zeros", None)))
                elif isinstance(source, (bytes, bytearray)):
                    sources.append((i, ("bytes", source)))
                else:
                    sources.append((i, ("ref", source)))
                positions[i] = only_frozen
        return sources, positions, self._epoch

    def _merged_frozen(self, frozen: Journal, key: DataKey | None,
                       item: tuple[int, tuple[str, Any]]) -> tuple[int, bytes | bytearray]:
        """(Any thread, the lock not held) Block ``index`` with the frozen journal's records
        applied."""
        index, (kind, source) = item
        if kind == "cached":
            return index, source
        block = self._merge_base(index, kind, source, key)
        frozen.overlay(index, block)
        return index, block

    def _map(self, fn: Any, items: list[Any]) -> Any:
        return self._flusher.map(fn, items) if self._flusher is not None and len(items) > 1 else map(fn, items)

    def _stage_dirty(self, indexes: list[int]) -> None:
        """(Locked, nothing in flight) Stage these dirty blocks (sealed in parallel). Zeros
        where nothing was ever written (here or in the lineage) need nothing stored."""
        if not indexes:
            return
        jobs: list[tuple[int, bytes | bytearray]] = [(i, self._cache[i]) for i in indexes]  # staged under the lock: no copy
        zeros = [i for i, data in jobs if is_zero_block(data) and i not in self._unpublished]
        if zeros:
            refs = self.blocks.block_refs(self.volume_id, zeros)
            jobs = [(i, data) for i, data in jobs if not (i in refs and refs[i] is None and i in zeros)]
        self._stage(jobs, parallel=True)
        self._dirty.difference_update(indexes)

    def _stage(self, jobs: list[tuple[int, bytes | bytearray]], *, parallel: bool = False) -> None:
        """(Locked, nothing in flight) Stage these blocks and remember them."""
        if not jobs:
            return
        map_fn = self._flusher.map if parallel and self._flusher is not None and len(jobs) > 1 else None
        journal = self._journal
        marked = {i for i, _d in jobs if journal is not None and journal.touched(i)}
        covered = journal.position() if journal is not None else {}
        self._epoch += 1
        epoch = self._epoch
        self._register(self.blocks.stage_blocks(self.volume_id, jobs, self._key, map_fn=map_fn, zero_objects=marked),
                       covered, epoch)
        self._dirty.difference_update(i for i, _d in jobs)


# A random read's part outside the lock (_plan_parts): position in the output, block, start,
# length, source (entry, buffer, None or _UNKNOWN) and the journal records over it (held).
_Part = tuple[int, int, int, int, Any, "HeldRecords | None"]
# A claimed load (_claim): token, source, the block's records in both journals (held), the
# journals' position at the claim and how many merges under the lock had reset them then.
_Claim = tuple[object, Any, "HeldRecords | None", Position, int]


def _release(parts: list[_Part]) -> None:
    """Let go of the journal files the parts hold."""
    for part in parts:
        if part[5] is not None:
            part[5].release()


def _spans(offset: int, length: int) -> Iterator[tuple[int, int, int]]:
    """(block index, start, end) within each block that [offset, offset+length) covers."""
    end = offset + length
    pos = offset
    while pos < end:
        index, start = divmod(pos, BLOCK_SIZE)
        stop = min(BLOCK_SIZE, start + end - pos)
        yield index, start, stop
        pos += stop - start
