"""Object backends for block objects: immutable blobs addressed by a key.

:class:`ObjectStore` is the interface (a local directory now; an S3-compatible store can
implement the same calls: :mod:`.s3store`). ``put`` is durable when it returns. Objects
are read only through block entries, and an entry is committed only after its object's
``put`` returned: an object being written (or left partial by a crash) is never read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import re
import resource
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from ebscrypt.errors import ServiceUnavailable

_KEY_RE = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{32}$")
# Files of objects nobody references any more, kept for reuse (``LocalDirStore.recycle``):
# overwriting a file whose pages are already in the page cache costs a tenth of writing a
# new one (the kernel allocates, zeroes and — on a VM whose free memory is handed back to
# the host — faults in fresh pages for each new 512 KiB object: 70% of an attached
# volume's sequential writes beyond its cache, bench/README.md W). Bounded: beyond it a
# recycled object is deleted as before (the pool's files hold disk space: 1 GiB at most,
# far less than the 60 s garbage grace keeps of a volume written at a few hundred MiB/s;
# with 1,024 a third of a sequential writer's superseded files were deleted, 12% of its CPU).
FREE_DIR = ".free"
RECYCLE_MAX = 2048


class ObjectMissing(KeyError):
    """No object under that key."""


class StoreUnavailable(ServiceUnavailable):
    """The object store did not answer, or failed (a remote store's 5xx after retries).
    Nothing was stored (put) or the object could not be read: the request may be retried."""


@runtime_checkable
class ObjectStore(Protocol):
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None: ...

    def put_many(self, items: Iterable[tuple[str, bytes | bytearray | memoryview]]) -> None: ...

    def get(self, key: str) -> bytes: ...

    def read_into(self, key: str, buf: bytearray) -> memoryview: ...

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def keys(self) -> Iterator[tuple[str, float]]: ...


class StagingStore(ObjectStore, Protocol):
    """A store that writes objects in two steps (:class:`LocalDirStore`): ``stage`` each,
    then ``publish`` a group of them with one flush (the block engine's group commit)."""

    def stage(self, key: str, data: bytes | bytearray | memoryview) -> "Staged": ...

    def publish(self, staged: list["Staged"], *, whole_fs: bool = False) -> None: ...

    def discard(self, staged: list["Staged"]) -> None: ...


@dataclass
class Staged:
    """An object written by ``stage`` under its final name, not yet durable. No entry
    names it until ``publish`` returned, so nothing reads it before then."""

    tmp: str  # the file written (its final path, or a temporary one when it replaces an object)
    path: Path
    fd: int
    published: bool = False
    replaces: bool = False  # an object of that key exists: renamed over it once durable


def new_object_key(shard: str | None = None) -> str:
    """A fresh random object key ``ss/<32 hex>``; a batch may share one shard."""
    return f"{shard or secrets.token_hex(1)}/{secrets.token_hex(16)}"


def new_shard() -> str:
    return secrets.token_hex(1)


class LocalDirStore:
    """Objects as files under ``root/<shard>/<name>``.

    ``put``: write the file under its final name (a fresh random key: nothing names it
    yet), then make it durable — one ``syncfs`` for a group of objects (data and
    directory entries in one device flush), else ``fdatasync`` and a directory fsync —
    and only then is the object acknowledged and its entry recorded. A crash before that
    leaves a file no entry names (partial or not: an entry is only ever committed after
    its object is durable), deleted by ``sweep_orphans``; a partial object could not be
    read as valid anyway (AES-GCM, or the checksum for plain objects). Files named
    ``.tmp-*`` were left by earlier versions (which renamed into place) and are swept too.
    """

    def __init__(self, root: Path | str, *, open_objects: int | None = None,
                 drop_written: bool | None = None, direct_writes: bool | None = None,
                 direct_reads: bool | None = None) -> None:
        self.root = Path(root)
        self._root_str = str(self.root)
        # Give an object's page-cache pages back once it is durable (see _drop_cache).
        self.drop_written = _drop_written_default() if drop_written is None else drop_written
        # Write an object's page-aligned part with O_DIRECT (see _write_object); turned off
        # by the first refusal (a file system without direct I/O: tmpfs).
        self.direct_writes = _direct_writes_default() if direct_writes is None else direct_writes
        self.direct_reads = _direct_reads_default() if direct_reads is None else direct_reads
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        # Descriptors of objects read lately, kept open: a ranged read (an attached
        # volume's random 4 KiB read) costs one pread, not open + pread + close.
        self._open = OpenObjects(open_objects if open_objects is not None else _open_objects_limit())
        # Names under ``root/.free`` this store put there (``recycle``), reused newest first
        # by ``write_unsynced``. Only in memory: files a crash (or another process) left
        # there are removed by ``trim_free`` (the orphan sweep). Another process sharing the
        # directory may take or remove one: a rename that finds nothing falls back to a new file.
        self._free_dir = self.root / FREE_DIR
        self._free_str = str(self._free_dir)
        self._free: list[str] = []
        self._free_lock = threading.Lock()
        self.recycled = 0  # objects written over a recycled file (observability, tests)
        # Reads in progress, by object key (``_reading``): ``recycle`` reuses no file a read
        # may still be using (it deletes that one instead), whatever the reader's path.
        self._reads: dict[str, int] = {}

    def __reduce__(self) -> tuple[Callable[[str], LocalDirStore], tuple[str]]:  # picklable for worker processes
        return (LocalDirStore, (str(self.root),))

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise ValueError(f"bad object key {key!r}")
        return self.root / key

    def _path_str(self, key: str) -> str:
        """:meth:`_path` as a string, for the per-block paths of attached volumes' writes
        (``write_unsynced``, ``recycle``): building ``Path`` objects was ~20% of a direct
        whole-block write's CPU in the writing thread (bench/README.md W6)."""
        if not _KEY_RE.match(key):
            raise ValueError(f"bad object key {key!r}")
        return f"{self._root_str}/{key}"

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self.put_many([(key, data)])

    def put_many(self, items: Iterable[tuple[str, bytes | bytearray | memoryview]]) -> None:
        """Store several objects durably: all data flushed before any rename, then one
        directory fsync per directory touched.

        ``items`` is consumed lazily: each object is written before the next is pulled,
        so a generator may reuse one buffer. Several objects are flushed with one
        ``syncfs`` (one device flush) instead of one ``fdatasync`` each.
        """
        staged: list[Staged] = []
        try:
            for key, data in items:
                staged.append(self.stage(key, data))
            self.publish(staged)
        except BaseException:
            self.discard(staged)
            raise

    # Two-phase writes, so concurrent writers can share one flush (group commit):
    # ``stage`` writes the object (not yet durable; no entry names it yet);
    # ``publish`` makes a list of staged objects durable; ``discard`` drops them.
    # (No temp file and rename: a rename would need a second flush, of the directory,
    # after the data's; the key is fresh and unreferenced until published.)

    def stage(self, key: str, data: bytes | bytearray | memoryview, *, direct: bool = True) -> "Staged":
        """Write an object (not durable yet). ``direct``: its page-aligned head with O_DIRECT
        where the store does (``_write_object``); False keeps it in the page cache. (An
        attached volume's evictions and direct writes go through :meth:`write_unsynced`
        instead, always buffered: they are read back soon, and the recycled files they are
        written over are worth reusing for their cached pages; a file written here with
        O_DIRECT may be recycled later and is then written over through the page cache,
        which O_DIRECT's write left coherent.)"""
        path = self._path(key)
        try:
            fd = self._create(path)
            staged = Staged(str(path), path, fd)
        except FileExistsError:
            # Not the engine's way (its keys are fresh), but the store's contract: an
            # overwrite is whole, so the new bytes go to a temporary file renamed over it.
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            staged = Staged(str(tmp), path, fd, replaces=True)
        try:
            self._write_object(fd, data, direct=direct)
        except BaseException:
            self.discard([staged])
            raise
        return staged

    def _write_object(self, fd: int, data: bytes | bytearray | memoryview, *, direct: bool = True) -> None:
        """Write a new object's bytes into ``fd`` (an empty file): its page-aligned head with
        O_DIRECT from this thread's aligned buffer, the tail (536 bytes of a sealed block)
        through the page cache.

        Why: a buffered write copies the object into fresh page-cache pages, and on a VM
        whose free memory the host holds back (this project's: balloon free-page
        reporting) each fresh page costs a host fault on first touch — 2.2-2.8 ms of
        system CPU per 512 KiB object in such moments, 0.15 ms otherwise; a direct write
        from a reused buffer costs ~0.1-0.16 ms in both (bench/README.md, section U). The
        object is durable only through ``publish`` as before: O_DIRECT puts the data on
        the device, not its cache or the file's metadata (size, extents), which the
        publish's syncfs / fdatasync flush. Not for ``write_unsynced`` (an attached volume
        reads its evicted blocks back soon: through the page cache, as before)."""
        view = memoryview(data).cast("B")
        head = len(view) - len(view) % _DIRECT_ALIGN if direct and self.direct_writes else 0
        if head >= _DIRECT_MIN:
            try:
                _write_direct(fd, view[:head])
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Not supported here (or not with this alignment): buffered from now on.
                self.direct_writes, head = False, 0
        else:
            head = 0
        at = head
        rest = view[head:]
        while rest:
            written = os.pwrite(fd, rest, at)
            rest, at = rest[written:], at + written

    def _create(self, path: Path | str) -> int:
        """Create the object's file (exclusively); its shard directory too, the first time
        (a ``mkdir`` per object, and the exception pathlib raises when it exists, was a
        measurable part of staging a block: issue 15)."""
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def publish(self, staged: list["Staged"], *, whole_fs: bool = False) -> None:
        """Make every staged object durable, its directory entry included: one
        ``syncfs`` (the whole file system in one flush, metadata too) for a group, else
        ``fdatasync`` of each then an fsync of their directories. On failure nothing
        staged is left behind.

        ``whole_fs``: always one ``syncfs`` (even for one object), so the flush also covers
        every other file of this file system written before it (the block engine relies
        on it for the metadata WAL: :meth:`covers`); an error if it fails."""
        try:
            replacing = [st for st in staged if st.replaces]
            if whole_fs:
                if _syncfs is None or not staged:
                    raise OSError("syncfs is not available")
                if _syncfs(staged[0].fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"syncfs failed: {os.strerror(err)}")
            elif not (len(staged) >= _SYNCFS_MIN and _syncfs is not None and _syncfs(staged[0].fd) == 0):
                for st in staged:
                    os.fdatasync(st.fd)
                for d in {st.path.parent for st in staged if not st.replaces}:
                    fsync_dir(d)
            for st in replacing:  # data durable first, then the rename, then its directory
                os.replace(st.tmp, st.path)
                st.tmp = str(st.path)
                self._open.forget(f"{st.path.parent.name}/{st.path.name}")  # (never the old object's bytes again)
            for d in {st.path.parent for st in replacing}:
                fsync_dir(d)
            if self.drop_written:
                _drop_cache(staged)
            for st in staged:
                os.close(st.fd)
                st.fd = -1
                st.published = True
        except BaseException:
            self.discard(staged)
            raise

    def covers(self, path: str) -> bool:
        """Whether ``publish(..., whole_fs=True)`` makes ``path``'s written data durable too:
        syncfs is available and the file lives on this store's file system."""
        try:
            return _syncfs is not None and os.stat(path).st_dev == os.stat(self.root).st_dev
        except OSError:
            return False

    # Deferred durability (attached volumes' evictions, engine.stage_blocks): an object is
    # written now and made durable later, with others, when its entry is about to be
    # recorded (an NBD FLUSH). No file descriptor is held meanwhile (hundreds of objects
    # may wait): ``sync_objects`` flushes by name.

    def write_unsynced(self, key: str, data: bytes | bytearray | memoryview | Sequence[memoryview]) -> None:
        """Write an object under its final (fresh) name, not durable yet; nothing names it
        until ``sync_objects`` returned and its entry is committed (a crash leaves an
        orphan for ``sweep_orphans``). ``data``: the object, or its pieces in order.
        Through the page cache, never O_DIRECT (unlike :meth:`stage`) and never followed by
        a page drop in ``sync_objects``: the object is read back soon, and its file, once
        superseded, is recycled for its pages."""
        parts = [memoryview(data)] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        path = self._path_str(key)
        if self._write_recycled(path, parts):
            return
        fd = self._create(path)  # (FileExistsError: only fresh keys)
        try:
            _write_all(fd, parts)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)

    def _write_recycled(self, path: str, parts: list[memoryview]) -> bool:
        """Write the object over a recycled file renamed to its (fresh) name, ``path``: its
        pages are in the page cache already. False: no recycled file (nothing done). A
        crash before ``sync_objects`` leaves an orphan under the new name, as for a new file."""
        while True:
            with self._free_lock:
                if not self._free:
                    return False
                name = self._free.pop()
            src = f"{self._free_str}/{name}"
            try:
                # (keys are fresh random names: nothing is replaced; sync_objects makes the
                # rename durable with the data, like a new file's directory entry)
                os.rename(src, path)
            except FileNotFoundError:
                if not os.path.exists(src):
                    continue  # taken or removed by another process: the next one
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)  # the shard's first object
                try:
                    os.rename(src, path)
                except FileNotFoundError:
                    continue
            break
        try:
            fd = os.open(path, os.O_WRONLY)  # never O_TRUNC: that would free the cached pages
            try:
                at = _write_all(fd, parts)
                if os.fstat(fd).st_size != at:
                    os.ftruncate(fd, at)  # (a block's object of the other kind: a few bytes' difference)
            finally:
                os.close(fd)
        except BaseException:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            raise
        self.recycled += 1
        return True

    def recycle(self, key: str) -> None:
        """Delete an object nobody references (garbage past its grace, or a staged object
        never to be published), keeping its file for a later ``write_unsynced``. Its name is
        gone at once (a read of it finds no object); a read using its descriptor now keeps
        it from being reused (deleted instead), so no read in flight gets another
        object's bytes. Beyond ``RECYCLE_MAX`` kept files, a plain delete."""
        path = self._path_str(key)
        # Named after the object it was (``ss`` + 32 hex): keys are fresh random names, never
        # reused, so the name is unique without drawing another random one.
        name = key.replace("/", "")
        with self._free_lock:
            # (under the lock a read registers under: one registered before finds its file
            # deleted, never reused; one after finds no object)
            reuse = len(self._free) < RECYCLE_MAX and not self._reads.get(key) and not self._open.forget(key)
            if reuse:
                dest = f"{self._free_str}/{name}"
                try:
                    os.rename(path, dest)
                except FileNotFoundError:
                    if os.path.exists(path):
                        self._free_dir.mkdir(mode=0o700, exist_ok=True)
                        os.rename(path, dest)
                    else:
                        return  # deleted already
                self._free.append(name)
                return
        self.delete(key)

    def _reading(self, key: str) -> "_Reading":
        """A read of ``key`` in progress (``with``): ``recycle`` leaves its file alone
        meanwhile. (A class, not a generator context manager: it is on the path of every
        random 4 KiB read of an attached volume, where contextlib's cost showed.)"""
        return _Reading(self, key)

    def _begin_read(self, key: str) -> None:
        with self._free_lock:
            self._reads[key] = self._reads.get(key, 0) + 1

    def _end_read(self, key: str) -> None:
        with self._free_lock:
            left = self._reads[key] - 1
            if left:
                self._reads[key] = left
            else:
                del self._reads[key]

    def trim_free(self) -> int:
        """Remove kept files this store did not put there (left by a crash or an earlier
        process): the orphan sweep calls it. Returns how many."""
        removed = 0
        with self._free_lock:
            mine = set(self._free)
        try:
            entries = list(os.scandir(self._free_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.name not in mine:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def sync_objects(self, keys: list[str]) -> None:
        """Make objects written by ``write_unsynced`` durable, their directory entries too:
        one ``syncfs`` for a group (it flushes the file system once), else ``fdatasync``
        of each and an fsync of their directories."""
        if not keys:
            return
        paths = [self._path(k) for k in keys]
        if len(paths) >= _SYNCFS_MIN and _syncfs is not None:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        for d in {path.parent for path in paths}:
            fsync_dir(d)

    @staticmethod
    def discard(staged: list["Staged"]) -> None:
        for st in staged:
            if st.fd >= 0:
                os.close(st.fd)
                st.fd = -1
            if not st.published:
                try:
                    os.unlink(st.tmp)
                except FileNotFoundError:
                    pass

    def get(self, key: str) -> bytes:
        try:
            with self._reading(key), open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def read_into(self, key: str, buf: bytearray) -> memoryview:
        """Read an object into ``buf`` (reused), returning the view of the bytes read.

        Give ``buf`` one byte more than the expected size: a view that long means the
        object is too long, and fails the caller's length check.
        """
        # (Not through the descriptors kept open: a whole object is read once per pass of a
        # sequential reader, and would only push out the objects random reads come back to.)
        with self._reading(key):
            try:
                fd = os.open(self._object_path(key), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ObjectMissing(key) from None
            try:
                n = 0
                view = memoryview(buf)
                while n < len(buf):
                    got = os.preadv(fd, [view[n:]], n)
                    if not got:
                        break
                    n += got
                return view[:n]
            finally:
                os.close(fd)

    def read_into_direct(self, key: str, buf: bytearray) -> memoryview:
        """:meth:`read_into`, the object read with O_DIRECT into this thread's aligned buffer
        (the view returned is of that buffer, not ``buf``, whose length is the limit: use it
        before this thread's next read or write of an object): for an object read once
        (GetSnapshotBlock), not kept in the page cache. Objects are written around the page cache (``_write_object``), so
        a buffered read would fill fresh page-cache pages from the disk (a host fault each
        in some moments on this project's VMs) and copy out of them: 0.19-0.20 ms of CPU
        per 512 KiB object against 0.10-0.11 direct, measured here (bench/README.md,
        section U). Falls back to :meth:`read_into` where direct I/O is refused."""
        if not self.direct_reads:
            return self.read_into(key, buf)
        # (registered as a read: ``recycle`` must not hand its file to a writer meanwhile)
        with self._reading(key):
            size = -(-len(buf) // _DIRECT_ALIGN) * _DIRECT_ALIGN
            try:
                fd = os.open(self._object_path(key), os.O_RDONLY | os.O_CLOEXEC | _O_DIRECT)
            except FileNotFoundError:
                raise ObjectMissing(key) from None
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct_reads = False  # not supported here: buffered from now on
                return self.read_into(key, buf)
            try:
                aligned = memoryview(_aligned_buffer(size))
                try:
                    n = 0
                    while n < size:
                        got = os.preadv(fd, [aligned[n:size]], n)
                        if not got:
                            break
                        n += got
                        if n % _DIRECT_ALIGN:
                            break  # a short read ends at the end of the file
                    return aligned[:min(n, len(buf))]
                except BaseException:
                    aligned.release()
                    raise
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct_reads = False
                return self.read_into(key, buf)
            finally:
                os.close(fd)

    def _object_path(self, key: str) -> str:
        if not _KEY_RE.match(key):
            raise ValueError(f"bad object key {key!r}")
        return f"{self._root_str}/{key}"  # (a string: pathlib's cost shows at tens of thousands of reads a second)

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, length) of the object: one open, a ``pread`` each
        (a sector read of an attached volume). A range past the end comes back short
        (the caller's length check fails it)."""
        with self._reading(key):
            fd = self._open.acquire(key, self._object_path(key))
            try:
                return [os.pread(fd, length, offset) for offset, length in ranges]
            finally:
                self._open.release(key, fd)

    def read_range_into(self, key: str, offset: int, dest: memoryview, *, keep: bool = True) -> int:
        """Read the object's bytes from ``offset`` into ``dest`` (up to its length) through
        the descriptors kept open; how many were read (fewer: the object is shorter). The
        read-side twin of :meth:`read_ranges` with no buffer of its own: a sequential reader
        of an attached volume reads the sectors straight into the reply's buffer (a fresh
        512 KiB ``bytes`` per read, then copied, was a third of the CPU of a MiB served).
        ``keep``: as :meth:`OpenObjects.acquire` (False for a sequential pass). Registered
        as a read (``_reading``): a descriptor opened for this read only is not one
        ``recycle`` can see lent, and the file must not be written over under it."""
        with self._reading(key):
            fd = self._open.acquire(key, self._object_path(key), keep=keep)
            try:
                n = 0
                while n < len(dest):
                    got = os.preadv(fd, [dest[n:]], offset + n)
                    if not got:
                        break
                    n += got
                return n
            finally:
                self._open.release(key, fd)

    def advise(self, key: str) -> None:
        """Ask the kernel to bring the object into the page cache in the background
        (POSIX_FADV_WILLNEED): a sequential reader's read-ahead with no thread nor buffer of
        ours. Best effort: an object gone or a kernel without it is ignored."""
        try:
            fd = self._open.acquire(key, self._object_path(key), keep=False)
        except (OSError, ObjectMissing):
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            self._open.release(key, fd)

    def read_range_cached(self, key: str, offset: int, length: int, *,
                          into: memoryview | None = None) -> bytes | bytearray | memoryview | None:
        """The range if the page cache holds all of it (``preadv`` with RWF_NOWAIT: never
        waits for the disk), else None. For a caller that must not block (an NBD
        connection's own thread); a short or missing object is None too: the blocking
        read decides what it is. ``into``: a buffer of at least ``length`` bytes to read
        into (the caller's, reused: the answer is then a view of it), else a new one."""
        if _RWF_NOWAIT is None or not _KEY_RE.match(key):
            return None
        self._begin_read(key)
        try:
            try:
                fd = self._open.acquire(key, f"{self._root_str}/{key}")
            except (OSError, ObjectMissing):
                return None
            try:
                buf = bytearray(length) if into is None else into[:length]
                got = os.preadv(fd, [buf], offset, _RWF_NOWAIT)
            except OSError:  # EAGAIN: not all in the page cache (or no RWF_NOWAIT support)
                return None
            finally:
                self._open.release(key, fd)
        finally:
            self._end_read(key)
        return buf if got == length else None

    def read_hot_into(self, key: str, offset: int, dest: memoryview) -> bool:
        """:meth:`read_range_cached` of ``len(dest)`` bytes into ``dest`` (True: all read,
        without waiting for the disk), for the hot path of an attached volume's random
        reads. An object whose descriptor is kept open costs one lease and one ``preadv``:
        no name check (it was checked when opened), no path, no read registration. Not
        registering is sound for this caller only: every byte it serves is checked
        against the object's verified header (GCM, or the sector table), and a failed
        check sends the read the blocking way, which resolves the block again — so a
        recycle racing this read can cost that retry, never another object's bytes.
        Any other object: :meth:`read_range_cached` (registered, opened, kept)."""
        nowait = _RWF_NOWAIT
        got = self._open.pread_kept(key, dest, offset, nowait) if nowait is not None else None
        if got is None:
            return self.read_range_cached(key, offset, len(dest), into=dest) is not None
        return got == len(dest)

    def close(self) -> None:
        """Close the descriptors kept open for reads, and remove the recycled files kept
        (the engine is closing)."""
        self._open.close()
        with self._free_lock:
            names, self._free = self._free, []
        for name in names:
            try:
                os.unlink(self._free_dir / name)
            except FileNotFoundError:
                pass

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        self._open.forget(key)  # closed now, or by the last read using it

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def keys(self) -> Iterator[tuple[str, float]]:
        """Every stored name with its modification time (temp files included)."""
        for shard in sorted(self.root.iterdir()):
            if not shard.is_dir() or shard.name == FREE_DIR:  # (recycled files: no objects)
                continue
            for entry in os.scandir(shard):
                try:
                    mtime = entry.stat().st_mtime
                except FileNotFoundError:  # a temp file renamed (or an object deleted) meanwhile
                    continue
                yield f"{shard.name}/{entry.name}", mtime

    def remove_raw(self, name: str) -> None:
        """Remove a leftover temp file by its relative name (sweeping)."""
        path = self.root / name
        if path.parent.parent == self.root and path.name.startswith(".tmp-"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class OpenObjects:
    """A bounded LRU of open descriptors of objects, by object key, for reads.

    Sound because an object never changes once written (a fresh random key each; an
    overwrite, which the engine never does, is a rename over it: :meth:`forget`).
    Reference-counted: a descriptor is closed only when no read is using it — evicted,
    or forgotten when its object is deleted or replaced — so no read ever uses a
    descriptor closed (or reused for another file) under it, and no read begun after
    a deletion or replacement in this process gets the old object's bytes: an open that
    raced one is used by its own read only, never kept."""

    def __init__(self, limit: int) -> None:
        self._limit = max(0, limit)
        self._mutex = threading.Lock()
        self._fds: OrderedDict[str, list[int]] = OrderedDict()  # key -> [fd, users]
        self._lent: dict[int, list[int]] = {}  # fd -> [users] of descriptors no longer listed (closed at 0)
        self._forgotten = 0  # forget() calls so far: an open racing one is not kept

    def acquire(self, key: str, path: str, *, keep: bool = True) -> int:
        """An open descriptor of the object (ObjectMissing if there is none): give it
        back with :meth:`release`. ``keep=False``: a descriptor opened now is kept only
        while there is room (a sequential reader passing over objects once must not push
        out those random reads come back to; below the bound, it saves an open a read)."""
        with self._mutex:
            entry = self._fds.get(key)
            if entry is not None:
                entry[1] += 1
                self._fds.move_to_end(key)
                return entry[0]
            epoch = self._forgotten
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        with self._mutex:
            entry = self._fds.get(key)
            full = len(self._fds) >= self._limit
            if entry is not None or epoch != self._forgotten or not self._limit or (full and not keep):
                # Opened by another read meanwhile (use theirs), or an object may have been
                # deleted or replaced meanwhile (use this descriptor for this read only).
                if entry is not None:
                    os.close(fd)
                    entry[1] += 1
                    return entry[0]
                self._lent[fd] = [1]
                return fd
            self._fds[key] = [fd, 1]
            while len(self._fds) > self._limit:
                _key, (old, users) = self._fds.popitem(last=False)
                if users:
                    self._lent[old] = [users]
                else:
                    os.close(old)
            return fd

    def lease(self, key: str) -> int | None:
        """:meth:`acquire` of a descriptor already kept open, else None (nothing opened):
        a hot reader's one lock and dictionary lookup. Give it back with :meth:`release`."""
        with self._mutex:
            entry = self._fds.get(key)
            if entry is None:
                return None
            entry[1] += 1
            self._fds.move_to_end(key)
            return entry[0]

    def pread_kept(self, key: str, dest: memoryview, offset: int, flags: int) -> int | None:
        """``preadv(dest, offset, flags)`` on the object's kept descriptor, leased for the
        read (:meth:`lease`, :meth:`release`): the bytes read, -1 if the read failed
        (EAGAIN under RWF_NOWAIT: not all in the page cache), None if the object has no
        descriptor kept open (nothing read)."""
        fd = self.lease(key)
        if fd is None:
            return None
        try:
            got: int = os.preadv(fd, [dest], offset, flags)
        except OSError:
            got = -1
        finally:
            self.release(key, fd)
        return got

    def release(self, key: str, fd: int) -> None:
        with self._mutex:
            entry = self._fds.get(key)
            if entry is not None and entry[0] == fd:
                entry[1] -= 1
                return
            lent = self._lent[fd]
            lent[0] -= 1
            if not lent[0]:
                del self._lent[fd]
                os.close(fd)

    def forget(self, key: str) -> bool:
        """The object was deleted or replaced: its descriptor is closed (by the last read
        using it, if any) and never lent again. True if a read is using it now."""
        with self._mutex:
            self._forgotten += 1
            entry = self._fds.pop(key, None)
            if entry is None:
                return False
            if entry[1]:
                self._lent[entry[0]] = [entry[1]]
                return True
            os.close(entry[0])
            return False

    def close(self) -> None:
        """Close every descriptor no read is using (the store is done with)."""
        with self._mutex:
            for key in [k for k, e in self._fds.items() if not e[1]]:
                os.close(self._fds.pop(key)[0])


class _Reading:
    """``LocalDirStore._reading``'s context manager."""

    __slots__ = ("_store", "_key")

    def __init__(self, store: LocalDirStore, key: str) -> None:
        self._store, self._key = store, key

    def __enter__(self) -> None:
        self._store._begin_read(self._key)

    def __exit__(self, *_exc: object) -> None:
        self._store._end_read(self._key)


def _open_objects_limit() -> int:
    """How many object descriptors to keep open: enough for the objects random reads of
    a few attached volumes come back to (a 1 GiB volume is 2,048 objects; fewer kept
    open than that and the LRU thrashes: an open per read), at most a quarter of the
    process's descriptor limit (sockets, the database, journals need the rest)."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY:
        return 8192
    return max(64, min(8192, soft // 4))


def _write_all(fd: int, parts: list[memoryview]) -> int:
    """Write the pieces from offset 0 on (``pwritev``: one system call, short writes
    resumed). Returns the size written."""
    at = 0
    left = [p for p in parts if len(p)]
    while left:
        n = os.pwritev(fd, left, at)
        at += n
        while left and n >= len(left[0]):
            n -= len(left[0])
            left.pop(0)
        if left and n:
            left[0] = left[0][n:]
    return at


def _load_syncfs() -> Callable[[int], int] | None:
    """libc ``syncfs(fd)`` (Linux): flush one file system with a single device flush."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
# Fewer objects: fdatasync each and fsync the directory. From two on, one syncfs costs
# less than the fdatasyncs (measured: 2 objects ~5-7 ms either way, 8 objects 33 ms vs
# 10 ms; bench/README.md) — it also flushes other files' dirty data, hence not for one.
_SYNCFS_MIN = 2


# O_DIRECT needs the file offset, the length and the memory aligned (to the device's
# logical block: 512 here; a page covers every device's). Objects below _DIRECT_MIN are
# written through the page cache (small metadata-like objects: nothing to save).
_DIRECT_ALIGN = 4096
_DIRECT_MIN = 64 * 1024
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_aligned = threading.local()


def _direct_writes_default() -> bool:
    return _O_DIRECT != 0 and os.environ.get("EBSCRYPT_STORE_DIRECT_WRITES", "1") != "0"


def _direct_reads_default() -> bool:
    return _O_DIRECT != 0 and os.environ.get("EBSCRYPT_STORE_DIRECT_READS", "1") != "0"


def _aligned_buffer(size: int) -> mmap.mmap:
    """This thread's page-aligned buffer of at least ``size`` bytes (an anonymous mapping,
    reused: a fresh one would cost its page faults on every write)."""
    buf: mmap.mmap | None = getattr(_aligned, "buf", None)
    if buf is None or len(buf) < size:
        # (the old one is not closed: a view returned by read_into_direct may still hold it)
        buf = mmap.mmap(-1, max(size, 1 << 20))
        _aligned.buf = buf
    return buf


def _write_direct(fd: int, view: memoryview) -> None:
    """Write ``view`` (a multiple of _DIRECT_ALIGN long) at offset 0 of ``fd`` with O_DIRECT
    (set on the descriptor for the write only): straight from ``view`` when it starts on an
    _DIRECT_ALIGN boundary (the block cipher seals into such a buffer: crypto.py
    ``_page_aligned``), else through this thread's aligned buffer (a 512 KiB copy)."""
    n = len(view)
    if _is_aligned(view):
        out = view
    else:
        out = memoryview(_aligned_buffer(n))
    try:
        if out is not view:
            out[:n] = view
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
        try:
            at = 0
            while at < n:
                at += os.pwrite(fd, out[at:n], at)
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    finally:
        if out is not view:
            out.release()


def _is_aligned(view: memoryview) -> bool:
    """Whether ``view``'s first byte sits on an _DIRECT_ALIGN boundary (only a writable
    buffer's address can be read from Python: a read-only one counts as unaligned)."""
    if view.readonly or not view.c_contiguous or len(view) == 0:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % _DIRECT_ALIGN == 0


def _drop_written_default() -> bool:
    return os.environ.get("EBSCRYPT_STORE_DROP_WRITTEN", "1") != "0"


def _drop_cache(staged: list["Staged"]) -> None:
    """Drop the page-cache pages of objects just made durable (clean now, so the kernel
    frees them at once).

    Why: writing an object copies it into page-cache pages the kernel takes from its free
    memory, and on a VM whose free memory the host has taken back (balloon free-page
    reporting: this project's VMs) each fresh page costs a host fault on first touch:
    ~2.2-2.8 ms of system CPU per 512 KiB object measured here against 0.23-0.34 ms when
    the pages written before are given back and so reused (bench/README.md, section U) —
    the largest part of a PutSnapshotBlock's server CPU, and why it swung 2-6 ms from one
    moment to the next. An object is read back rarely soon after it is written (a
    download reads it from the disk, into pages just freed); the kept-open descriptors of
    the read path are not affected. Advisory: a failure changes nothing but the cost."""
    for st in staged:
        try:
            os.posix_fadvise(st.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
