"""Attached volumes across ``serve --workers N``: one process holds them, the others ask it.

An attached volume's data key and open state (its cache, its write journal) must live in
one process: the one whose NBD server serves the export. With several API workers on one
host that is the primary (worker 0). An AttachVolume, a DetachVolume, a CreateSnapshot of
an in-use volume or an instance's start/stop/terminate may be served — or its job run — by
any worker; the three points where the EC2 engine touches attached volumes
(``open_volume``, ``close_volumes``, ``quiesced`` in engine.py) reach the primary's
:class:`~ebscrypt.engines.attach.engine.AttachEngine` through :class:`RemoteAttach`, over a
local socket served by :class:`AttachServer` in the primary:

- ``open``: the primary opens the volume itself (:meth:`AttachEngine.reopen_attached`):
  it reads the attachment from the database and decrypts the data key through EBS's
  grant (audited, as at an NBD re-open) — no plaintext key leaves the process that
  decrypted it; the other worker's copy is dropped.
- ``close``: the primary flushes and forgets the volume (its journal merged), and answers
  when that is done: a detach is acknowledged after the flush, as with one process.
- ``hold``: the primary quiesces the volume and keeps it so while the connection stays
  open; the worker commits the snapshot, then releases it (or its connection closes).

The socket is in Linux's abstract namespace (no file to leave behind), its name chosen at
random by the parent; the primary answers only processes of its own user (SO_PEERCRED).
While the primary restarts (the parent restarts a worker that died), a call waits for it
up to ``CONNECT_SECONDS``, then fails with a retryable 503.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import bindparam, select

from ebscrypt.errors import ServiceUnavailable
from ebscrypt.storage.tables.ec2 import ec2_volume_attachments

log = logging.getLogger("ebscrypt.attach")

CONNECT_SECONDS = 15.0
HOLD_SECONDS = 60.0  # the longest the primary waits on one request's connection (a hold's release)
_ATTACHED = select(ec2_volume_attachments.c.volume_id).where(
    ec2_volume_attachments.c.volume_id == bindparam("id")).limit(1)
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _address(name: str) -> str:
    return "\0" + name  # abstract namespace


class AttachServer:
    """The primary's side: answers ``open``/``close``/``hold`` on its attach engine."""

    def __init__(self, engine: Any, name: str) -> None:
        self.engine = engine
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(_address(name))
        self._sock.listen(64)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="ebscrypt-attach-rpc", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            pid, uid, _gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
            if uid != os.getuid():
                log.warning("attach requests refused from pid %d of another user (uid %d)", pid, uid)
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="ebscrypt-attach-rpc-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(HOLD_SECONDS)  # every request is short; a hold is one transaction
        with conn, conn.makefile("rwb", buffering=0) as stream:
            try:
                request = json.loads(stream.readline() or b"{}")
                self._answer(request, stream)
            except Exception as exc:  # an answer, never a dead thread: the caller fails its request
                log.exception("attach request failed")
                _send(stream, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})

    def _answer(self, request: dict[str, Any], stream: Any) -> None:
        op, volume_id = request.get("op"), str(request.get("volume", ""))
        if op == "open":
            _send(stream, {"ok": True, "open": self.engine.reopen_attached(volume_id) is not None})
        elif op == "close":
            self.engine.close_volume(volume_id)
            _send(stream, {"ok": True})
        elif op == "hold":
            with self.engine.quiesced(volume_id):
                _send(stream, {"ok": True})
                try:  # "release", or EOF: the worker's snapshot is committed (or it died)
                    stream.readline()
                except TimeoutError:  # a worker that hangs does not stall the volume's I/O for good
                    log.warning("a hold of %s was not released in %.0f s; released", volume_id, HOLD_SECONDS)
            _send(stream, {"ok": True})
        else:
            _send(stream, {"ok": False, "error": f"unknown request {op!r}"})

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def _send(stream: Any, message: dict[str, Any]) -> None:
    try:
        stream.write(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the caller went away: nothing to tell it


class RemoteAttach:
    """A non-primary worker's ``runtime.engines["attach"]``: the export names from the
    shared export key, every open/close/quiesce by the primary (see the module's text)."""

    def __init__(self, data_dir: Path, name: str, db: Any = None) -> None:
        from ebscrypt.engines.attach.engine import ExportNames

        self._name = name
        self._data_dir = Path(data_dir)
        self._db = db
        self.names = ExportNames(self._data_dir / "nbd-export.key")

    def export_name(self, volume_id: str, instance_id: str, attach_time: Any) -> str:
        return self.names.export_name(volume_id, instance_id, attach_time)

    def snapshot_export_name(self, snapshot_id: str, account: str) -> str:
        return self.names.snapshot_export_name(snapshot_id, account)

    def open(self, volume: Any, key: Any, instance_id: str) -> None:
        """The primary opens the volume (its own audited decrypt); ``key`` is dropped here."""
        del key
        self._call({"op": "open", "volume": volume.id})

    def close_volume(self, volume_id: str) -> None:
        self._call({"op": "close", "volume": volume_id})

    @contextmanager
    def quiesced(self, volume_id: str) -> Iterator[None]:
        if not self._may_be_held(volume_id):  # a CreateSnapshot of a volume never attached: no round trip
            yield
            return
        with self._connect() as conn, conn.makefile("rwb", buffering=0) as stream:
            _expect_ok(stream, {"op": "hold", "volume": volume_id})
            try:
                yield
            finally:
                try:
                    stream.write(b"release\n")
                    stream.readline()  # the primary let go of the volume
                except OSError:
                    pass

    def _may_be_held(self, volume_id: str) -> bool:
        """Whether the primary may hold something of the volume to flush first: an open
        volume (it is attached) or a journal a crash left. The primary's own ``quiesced``
        holds only those; a volume attached after this read is no more held than one
        attached just after the primary's own check."""
        from ebscrypt.engines.attach.engine import journal_path
        from ebscrypt.engines.attach.journal import journal_exists

        if self._db is None or journal_exists(journal_path(self._data_dir, volume_id)):
            return True
        with self._db.read() as conn:
            return conn.execute(_ATTACHED, {"id": volume_id}).first() is not None

    def publish_due(self) -> None:
        """Nothing staged here: the primary publishes its volumes' blocks."""

    def close(self) -> None:
        """Nothing held here."""

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._connect() as conn, conn.makefile("rwb", buffering=0) as stream:
            return _expect_ok(stream, request)

    def _connect(self) -> socket.socket:
        """A connection to the primary, waiting for it while it (re)starts."""
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(_address(self._name))
                return sock
            except OSError:
                sock.close()
                if time.monotonic() >= deadline:
                    raise ServiceUnavailable(
                        "The server process that holds attached volumes is not available (restarting); retry."
                    ) from None
                time.sleep(0.1)


def _expect_ok(stream: Any, request: dict[str, Any]) -> dict[str, Any]:
    try:
        stream.write(json.dumps(request).encode() + b"\n")
        line = stream.readline()
    except OSError:
        line = b""
    if not line:  # the primary died while answering
        raise ServiceUnavailable("The server process that holds attached volumes stopped while answering; retry.")
    answer: dict[str, Any] = json.loads(line)
    if not answer.get("ok"):
        raise ServiceUnavailable(f"The server process that holds attached volumes failed: {answer.get('error')}")
    return answer
