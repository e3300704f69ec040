"""The attachments' data keys and open volumes of this server process (``runtime.attach``).

R-ATTACH-2, the key lifecycle of an attachment as EC2's hosts have it: at attach (also
for the volumes RunInstances creates attached, and at StartInstances) the EC2 engine
decrypts the volume's data key through EBS's grant — one KMS Decrypt on the caller's
behalf, in the audit trail — and hands the plaintext to :meth:`AttachEngine.open`. It
lives only in this process's memory (an :class:`OpenVolume`) while the volume is
attached and its instance running, and is dropped at detach, stop and terminate. A key
disabled or scheduled for deletion after that does not interrupt I/O: nothing asks KMS
again until the next attach or start, which then fails as on AWS.

After a restart no key is in memory. The first NBD client of a volume that is still
attached to a running instance re-opens it: the data key is decrypted once more on the
owner's behalf (audited, operation ``AttachVolume``), as a host does when it takes
an instance back; if the key is no longer usable the export is refused.

Who may use an export (the account owning the attachment's instance): NBD carries no
credentials, so the export name carries one. Each attachment has an export secret,
HMAC-SHA256 under a server key (``<data-dir>/nbd-export.key``, 0600) of the volume id,
instance id and attach time — a new attachment gets a new secret, and a detached one's
secret opens nothing. The export name ``<volume-id>:<secret>`` is shown to the owner only:
DescribeVolumes (an authenticated call of the volume's account) lists it as the tag
``ebscrypt:nbd-export`` of an in-use volume, under ``--auth strict``. Under dev auth
(loopback only, where any local caller may act as any account anyway) the bare volume id
is accepted too; under strict auth only the name with its secret.

Read-only exports are snapshots (as on AWS, where a snapshot is the read-only form of a
volume): the export name ``snap-…`` of a ``completed`` snapshot serves its blocks — the
volume as it was — with NBD_FLAG_READ_ONLY; writes, trims and zeroes get EPERM. Its data
key is decrypted through EBS's grant when the first connection opens it (a KMS Decrypt
on the snapshot owner's behalf, audited, operation ``GetSnapshotBlock`` as for the EBS
direct APIs) and dropped when the last connection to it closes. Who may read it: under
dev auth the bare ``snap-…`` (loopback, any local caller may act as any account — the
same rule as a bare volume id; read on the owner's behalf). Under strict auth the name
``snap-…:<account>:<secret>``, the secret an HMAC under the server key of the snapshot
and account, shown to that account only (DescribeSnapshots tag ``ebscrypt:nbd-export``);
at each open the account must still own the snapshot or be granted createVolumePermission
(its account or ``all``), and the data key is decrypted on that account's behalf (its
own KMS permissions, as for a volume it would create from the snapshot).

Everything here is in-process: an attached volume is served by the process that holds
its key (documented limit of scale-out: NBD clients go to that process). With
``serve --workers N`` on one host that is worker 0; the others reach it through
:mod:`ebscrypt.engines.attach.remote`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ContextManager, Iterator

from sqlalchemy import select

from ebscrypt.domain import instance_types as it
from ebscrypt.engines.attach.journal import journal_exists
from ebscrypt.engines.attach.volume_io import OpenVolume
from ebscrypt.engines.blocks.crypto import DataKey
from ebscrypt.engines.ec2.encryption import data_key_for
from ebscrypt.engines.ec2.ids import is_well_formed, job_ctx
from ebscrypt.engines.ec2.records import Snapshot, Volume
from ebscrypt.engines.ec2.snapshot_access import grantees
from ebscrypt.errors import ServiceError
from ebscrypt.heap import IdleTrim
from ebscrypt.storage.tables.ec2 import ec2_snapshots, ec2_volume_attachments, ec2_volumes
from ebscrypt.storage.tables.ec2_images import ec2_instances

log = logging.getLogger("ebscrypt.attach")

# Each attached volume's write journal holds at most this much (and one record per 4 KiB
# of it) before it is merged into whole blocks: the larger, the fewer 512 KiB blocks are
# rewritten per small write (a merge rewrites each block with records once); its index
# in memory is ~80 bytes a record (~10 MiB at this size), whatever the volume's size.
JOURNAL_BYTES = 512 << 20
# Seconds between checks for quiet exports (AttachEngine.trim_when_idle): memory goes back
# 10–20 s after the last request.
TRIM_PERIOD = 10.0
EXPORT_TAG = "ebscrypt:nbd-export"  # DescribeVolumes shows an in-use volume's export name under it (strict auth)


class AttachEngine:
    """Open volumes by id. Thread-safe; one per server process."""

    def __init__(self, runtime: Any, *, cache_blocks: int = 64) -> None:
        self.runtime = runtime
        self.cache_blocks = cache_blocks
        self.names = ExportNames(runtime.settings.data_dir / "nbd-export.key")
        self._open: dict[str, OpenVolume] = {}
        # (snapshot id, reading account) -> (export, connections): each account's own key use
        self._snapshots: dict[tuple[str, str], tuple[OpenVolume, int]] = {}
        self._lock = threading.Lock()
        self.server: Any = None  # serve --workers N: the other workers' requests (remote.AttachServer)
        # Dirty blocks (of a flush, or evicted and written behind) are stored concurrently,
        # so they share the block engine's group commits.
        self._flusher = ThreadPoolExecutor(8, thread_name_prefix="ebscrypt-attach-flush")
        # Evicted blocks wait for the next FLUSH to be published; a volume left idle has
        # them published after a while all the same (volume_io.PUBLISH_AGE).
        runtime.blocks.add_periodic("attach-publish", self.publish_due, 10.0)
        # Memory the I/O of the open volumes used and freed (payload and block buffers kept
        # by the C allocator) goes back to the system once they are all quiet (heap.py).
        self._idle_trim = IdleTrim()
        runtime.blocks.add_periodic("attach-trim", self.trim_when_idle, TRIM_PERIOD)

    # ------------------------------------------------------------------ lifecycle

    def open(self, volume: Any, key: DataKey | None, instance_id: str) -> OpenVolume:
        """Keep ``key`` (just decrypted through EBS's grant) for the attached ``volume``."""
        with self._lock:
            old = self._open.pop(volume.id, None)
        if old is not None:
            old.close()  # first: its journal is merged and removed before the new one opens it
        ov = OpenVolume(self.runtime.blocks, volume.id, volume.size, key, account=volume.account,
                        instance_id=instance_id, cache_blocks=self.cache_blocks, flusher=self._flusher,
                        journal_path=self.journal_path(volume.id), journal_bytes=JOURNAL_BYTES)
        with self._lock:
            raced = self._open.pop(volume.id, None)
            self._open[volume.id] = ov
        if raced is not None:  # (two opens at once: not expected; the later one wins)
            raced.close()
        return ov

    def journal_path(self, volume_id: str) -> Path:
        return journal_path(self.runtime.settings.data_dir, volume_id)

    def close_volume(self, volume_id: str) -> None:
        """Flush and forget the volume's key (detach / stop / terminate / delete). Idempotent."""
        with self._lock:
            ov = self._open.pop(volume_id, None)
        if ov is None:
            try:
                ov = self._recover(volume_id)
            except Exception:  # its key no longer usable, or its journal altered: kept for the next open
                log.exception("the write journal of %s could not be merged at its close", volume_id)
        if ov is not None:
            ov.close()

    def _recover(self, volume_id: str) -> OpenVolume | None:
        """A volume not open here whose journal a crash left (no NBD client came back to
        it since the restart): opened once more (its data key decrypted on its owner's
        behalf, audited, as at a re-open), which merges the journal into its blocks — so a
        detach or a snapshot never leaves flushed writes behind. None when there is none."""
        if not is_well_formed(volume_id, "vol") or not journal_exists(self.journal_path(volume_id)):
            return None
        with self.runtime.db.read() as conn:
            row = conn.execute(select(ec2_volumes).where(ec2_volumes.c.id == volume_id)).mappings().first()
        if row is None:
            return None
        volume = Volume.from_row(row)
        ctx = job_ctx(self.runtime, volume.account, volume.region, "AttachVolume")
        key = data_key_for(ctx, volume)  # the caller fails (detach, snapshot) if the key cannot be used
        ov = OpenVolume(self.runtime.blocks, volume.id, volume.size, key, account=volume.account,
                        instance_id="", cache_blocks=4, journal_path=self.journal_path(volume.id))
        ov._check_open()  # a journal that cannot be trusted fails loudly here
        return ov

    def get(self, volume_id: str) -> OpenVolume | None:
        with self._lock:
            return self._open.get(volume_id)

    def quiesced(self, volume_id: str) -> ContextManager[None]:
        """For CreateSnapshot of an in-use volume (R-ATTACH-4): flushed and held still."""
        ov = self.get(volume_id)
        if ov is None:
            recovered = self._recover(volume_id)  # a crash left its journal: merged first
            if recovered is not None:
                recovered.close()
        return ov.quiesced() if ov is not None else nullcontext()

    def publish_due(self) -> None:
        """Publish the blocks staged long enough ago in every open volume (periodic)."""
        with self._lock:
            opened = list(self._open.values())
        for ov in opened:
            try:
                ov.publish_due()
            except Exception:
                log.exception("publishing the staged blocks of %s failed", ov.volume_id)

    def trim_when_idle(self) -> bool:
        """(Periodic) Give the allocator's free memory back if no export served a request
        since the last call (and none was opened or closed); True when it did."""
        with self._lock:
            opened = list(self._open.values()) + [ov for ov, _n in self._snapshots.values()]
        return self._idle_trim.tick(tuple(sorted((ov.volume_id, id(ov), ov.activity) for ov in opened)))

    def close(self) -> None:
        """Shutdown: flush every open volume, drop every key."""
        if self.server is not None:
            self.server.close()
        with self._lock:
            opened = list(self._open.values()) + [ov for ov, _n in self._snapshots.values()]
            self._open.clear()
            self._snapshots.clear()
        for ov in opened:
            try:
                ov.close()
            except Exception:
                log.exception("flushing %s at shutdown failed", ov.volume_id)
        self._flusher.shutdown(wait=True)

    # ------------------------------------------------------------------ exports

    def export_name(self, volume_id: str, instance_id: str, attach_time: Any) -> str:
        """``<volume-id>:<secret>``: the export name of this attachment, for its owner only."""
        return self.names.export_name(volume_id, instance_id, attach_time)

    def _secret(self, volume_id: str, instance_id: str, attach_time: Any) -> str:
        return self.names.secret(volume_id, instance_id, attach_time)

    def export(self, name: str) -> OpenVolume | None:
        """The open volume an NBD client asking for export ``name`` may use, or None (not
        attached, instance not running, wrong or missing secret, or its key no longer
        usable after a restart). Blocking: DB and KMS."""
        volume_id, _sep, secret = name.partition(":")
        if volume_id.startswith("snap-"):
            return self._snapshot_export(volume_id, secret)
        if secret or self.runtime.settings.auth != "dev":
            if not self._secret_matches(volume_id, secret):
                return None
        ov = self.get(volume_id)
        if ov is not None:
            return ov
        return self._reopen(volume_id)

    def snapshot_export_name(self, snapshot_id: str, account: str) -> str:
        """``snap-…:<account>:<secret>``: the read-only export of a snapshot for ``account``."""
        return self.names.snapshot_export_name(snapshot_id, account)

    def _snapshot_secret(self, snapshot_id: str, account: str) -> str:
        return self.names.snapshot_secret(snapshot_id, account)

    def release(self, export: OpenVolume) -> None:
        """A connection to ``export`` ended: the last one to a snapshot drops its key."""
        if not export.read_only:
            return  # an attached volume stays open until it is detached
        ident = (export.volume_id, export.account)
        with self._lock:
            held = self._snapshots.get(ident)
            if held is None or held[0] is not export:
                return
            if held[1] > 1:
                self._snapshots[ident] = (export, held[1] - 1)
                return
            del self._snapshots[ident]
        export.close()

    def _snapshot_export(self, snapshot_id: str, credentials: str) -> OpenVolume | None:
        """A read-only export of a completed snapshot (one more connection to it), or None."""
        if not is_well_formed(snapshot_id, "snap"):
            return None
        account, _sep, secret = credentials.partition(":")
        if credentials or self.runtime.settings.auth != "dev":
            if not account or not hmac.compare_digest(self._snapshot_secret(snapshot_id, account), secret):
                return None
        with self.runtime.db.read() as conn:
            row = conn.execute(select(ec2_snapshots).where(ec2_snapshots.c.id == snapshot_id)).mappings().first()
            if row is None or row["state"] != "completed":
                return None
            reader = account or row["account"]
            if reader != row["account"] and not ({reader, "all"} & grantees(conn, snapshot_id)):
                return None  # no longer shared with that account
        ident = (snapshot_id, reader)
        with self._lock:
            held = self._snapshots.get(ident)
            if held is not None:
                self._snapshots[ident] = (held[0], held[1] + 1)
                return held[0]
        snap = Snapshot.from_row(row)
        ctx = job_ctx(self.runtime, reader, snap.region, "GetSnapshotBlock")
        try:
            key = data_key_for(ctx, snap)  # EBS's grant + one audited Decrypt, as for GetSnapshotBlock
        except ServiceError as err:
            log.warning("export %s refused: its data key cannot be decrypted (%s)", snapshot_id, err.code)
            return None
        ov = OpenVolume(self.runtime.blocks, snap.id, snap.volume_size, key, account=reader,
                        instance_id="", cache_blocks=min(self.cache_blocks, 64), read_only=True)
        with self._lock:
            held = self._snapshots.get(ident)
            if held is not None:  # another connection opened it meanwhile: share that one
                self._snapshots[ident] = (held[0], held[1] + 1)
                return held[0]
            self._snapshots[ident] = (ov, 1)
        return ov

    def _secret_matches(self, volume_id: str, secret: str) -> bool:
        if not secret:
            return False
        with self.runtime.db.read() as conn:
            rows = conn.execute(select(ec2_volume_attachments).where(
                ec2_volume_attachments.c.volume_id == volume_id)).mappings().all()
        return any(hmac.compare_digest(self._secret(volume_id, r["instance_id"], r["attach_time"]), secret)
                   for r in rows)

    def reopen_attached(self, volume_id: str) -> OpenVolume | None:
        """The volume, opened here if it is attached to a running instance (its data key
        decrypted through EBS's grant, audited), or None: for another worker of
        ``serve --workers`` that attached it (engines/attach/remote.py)."""
        return self._reopen(volume_id)

    def _reopen(self, volume_id: str) -> OpenVolume | None:
        if not is_well_formed(volume_id, "vol"):
            return None
        with self.runtime.db.read() as conn:
            row = conn.execute(select(ec2_volumes).where(ec2_volumes.c.id == volume_id)).mappings().first()
            if row is None or row["state"] != "in-use":
                return None
            att = conn.execute(select(ec2_volume_attachments).where(
                ec2_volume_attachments.c.volume_id == volume_id,
                ec2_volume_attachments.c.state == "attached")).mappings().first()
            if att is None:
                return None
            inst = conn.execute(select(ec2_instances.c.state).where(
                ec2_instances.c.instance_id == att["instance_id"])).first()
            if inst is None or inst.state != it.RUNNING:
                return None
        volume = Volume.from_row(row)
        ctx = job_ctx(self.runtime, volume.account, volume.region, "AttachVolume")
        try:
            key = data_key_for(ctx, volume)  # R-ATTACH-2: grant + one audited Decrypt
        except ServiceError as err:
            log.warning("export %s refused: its data key cannot be decrypted (%s)", volume_id, err.code)
            return None
        with self._lock:
            ov = self._open.get(volume_id)
        if ov is not None:
            return ov
        ov = self.open(volume, key, att["instance_id"])
        with self.runtime.db.read() as conn:  # detached while the key was being decrypted?
            still = conn.execute(select(ec2_volume_attachments.c.volume_id).where(
                ec2_volume_attachments.c.volume_id == volume_id,
                ec2_volume_attachments.c.instance_id == att["instance_id"])).first()
        if still is None:
            self.close_volume(volume_id)
            return None
        return ov


def journal_path(data_dir: Path, volume_id: str) -> Path:
    """The volume's write journal (volume_io, journal.py): a local file beside the
    database, whatever the block store (its records are sealed like the blocks)."""
    return Path(data_dir) / "journal" / f"{volume_id}.jnl"


class ExportNames:
    """Export names and their secrets: HMACs under the server's export key (one file in
    the data dir, shared by every worker of ``serve --workers``)."""

    def __init__(self, path: Path) -> None:
        self._key = _load_export_key(path)

    def export_name(self, volume_id: str, instance_id: str, attach_time: Any) -> str:
        return f"{volume_id}:{self.secret(volume_id, instance_id, attach_time)}"

    def secret(self, volume_id: str, instance_id: str, attach_time: Any) -> str:
        stamp = attach_time.replace(tzinfo=None).isoformat(timespec="microseconds") if attach_time else ""
        msg = f"ebscrypt-nbd-export-v1|{volume_id}|{instance_id}|{stamp}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]

    def snapshot_export_name(self, snapshot_id: str, account: str) -> str:
        return f"{snapshot_id}:{account}:{self.snapshot_secret(snapshot_id, account)}"

    def snapshot_secret(self, snapshot_id: str, account: str) -> str:
        msg = f"ebscrypt-nbd-snapshot-v1|{snapshot_id}|{account}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]


def ensure_export_key(data_dir: Path) -> None:
    """Make the export key now (``serve --workers``: before the workers start, so they
    never race to create two different ones)."""
    _load_export_key(Path(data_dir) / "nbd-export.key")


def _load_export_key(path: Any) -> bytes:
    """The server's export-secret key: made once (0600), kept across restarts."""
    try:
        key: bytes = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


@contextmanager
def quiesced(runtime: Any, volume_id: str) -> Iterator[None]:
    """``runtime.attach.quiesced(volume_id)`` when the attach engine is loaded, else nothing."""
    engine = runtime.engines.get("attach")
    with engine.quiesced(volume_id) if engine is not None else nullcontext():
        yield


def close_volumes(runtime: Any, volume_ids: list[str]) -> None:
    """Drop the keys of these volumes (detach, stop, terminate); no-op without the engine."""
    engine = runtime.engines.get("attach")
    if engine is not None:
        for vid in volume_ids:
            engine.close_volume(vid)


def open_volume(runtime: Any, volume: Any, key: DataKey | None, instance_id: str) -> None:
    engine = runtime.engines.get("attach")
    if engine is not None:
        engine.open(volume, key, instance_id)
