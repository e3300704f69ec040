"""The NBD server ``ebscrypt serve`` starts (``--nbd-port``, default 10809; 0 disables).

Why a small asyncio server of our own rather than nbdkit or qemu-nbd: the bytes it
serves are the block engine's, decrypted with a data key that must stay in this
process's memory (R-ATTACH-2) — an nbdkit plugin would need the plaintext key handed to
another process, or a Python plugin re-implementing the block engine's database access
there. In-process it negotiates on the API server's own event loop (no extra daemon to
start, supervise or secure), reaches the open volumes directly, and the tests drive it
with the real clients (nbdinfo, nbdcopy, qemu-img, qemu-io) all the same. The protocol
is parsed in :mod:`ebscrypt.wire.nbd`; volume I/O is
:mod:`ebscrypt.engines.attach.volume_io`.

Transmission (speed, issue 12): after NBD_OPT_GO a plain-TCP connection leaves the event
loop for a thread of its own on a blocking socket (:class:`_ThreadedConnection`: requests
parsed from one receive buffer, payloads received in place, the replies of a queue of
requests sent together); a TLS connection stays on the loop (:meth:`NbdServer._transmit`,
the TLS layer being asyncio's). Either way a READ or WRITE the volume's cache answers
at once is served right there (``_inline``); anything needing disk, crypto or the
database (``execute``) goes to a thread pool, so AES-GCM and disk I/O never block the
loop nor the connection's reading.

Exports: the export name is the volume id; only a volume attached to a running
instance is exported (any other name: NBD_REP_ERR_UNKNOWN at NBD_OPT_GO/INFO, a hang-up
at NBD_OPT_EXPORT_NAME). A completed snapshot's id is a read-only export (see
``engines/attach/engine.py``). NBD_OPT_LIST lists nothing (names are other accounts'
business). Structured replies and the ``base:allocation`` metadata context are offered
(NBD_CMD_BLOCK_STATUS: which ranges are holes).

Who may connect: NBD carries no credentials; the export name does (under strict auth a
per-attachment secret, see ``engines/attach/engine.py``). Without TLS the server listens
on a loopback address only. With ``--nbd-tls-cert``/``--nbd-tls-key`` (X.509, as qemu and
libnbd's ``nbds://`` URIs use) it requires TLS (NBD_OPT_STARTTLS, TLS 1.2 or later)
before anything else — every other option gets NBD_REP_ERR_TLS_REQD — and may then
listen on any address. Every connection is logged with its export.

A client that breaks the protocol (bad magic, a length beyond the 32 MiB maximum, a
disconnect mid-request) loses its connection; one connection holds at most 16 requests
and 64 MiB of payload at once; what it had not fully sent is not
applied; other connections and exports are unaffected. Out-of-range requests get
EINVAL (ENOSPC for writes) and the connection goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ebscrypt.engines.attach.volume_io import OpenVolume, ReadOnly, VolumeClosed
from ebscrypt.wire import nbd

log = logging.getLogger("ebscrypt.nbd")

EXPORT_FLAGS = (nbd.TF_HAS_FLAGS | nbd.TF_SEND_FLUSH | nbd.TF_SEND_FUA | nbd.TF_SEND_TRIM
                | nbd.TF_SEND_WRITE_ZEROES | nbd.TF_CAN_MULTI_CONN)
READ_ONLY_FLAGS = nbd.TF_HAS_FLAGS | nbd.TF_READ_ONLY | nbd.TF_SEND_FLUSH | nbd.TF_CAN_MULTI_CONN
BLOCK_STATUS_BLOCKS = 1024  # blocks (512 MiB) one BLOCK_STATUS answer covers at most (the client asks again)
IN_FLIGHT = 16  # requests per connection being served at once
IN_FLIGHT_BYTES = 64 * 1024 * 1024  # payload bytes per connection held at once (reads and writes)
# Write payloads at least this large are received into buffers reused per connection (at
# most SPARE_BUFFERS kept: within the connection's in-flight budget's worth, 8 MiB at 1 MiB).
SPARE_MIN = 64 * 1024
SPARE_BUFFERS = 8
# Buffers larger than this are not kept (a client of 32 MiB writes must not leave 8 x 32 MiB
# behind per connection).
SPARE_MAX = 4 * 1024 * 1024
SEND_TIMEOUT = 30  # seconds a reply may wait for the client to read (threaded connections)
RECV_BUFFER = 256 * 1024  # threaded connections: bytes received at once (many small requests)
COALESCE = 256 * 1024  # threaded connections: replies up to this many bytes go out in one send
IOV_BATCH = 512  # buffers one sendmsg gathers (below IOV_MAX, 1024 on Linux)
# Threaded connections: READs up to this size the volume serves at once have their reply
# assembled in the connection's output buffer (``_ThreadedConnection._hot_reads``).
HOT_READ_MAX = 64 * 1024
# Threaded connections: READs received together served in one batch at most (their replies
# fit in the output buffer's room anyway: ``_hot_reads``).
HOT_BATCH = 64
_REQUEST, _READ_CHUNK, _SIMPLE = nbd.REQUEST_STRUCT, nbd.READ_CHUNK_STRUCT, nbd.SIMPLE_STRUCT
READ_LIMIT = 2 * 1024 * 1024  # the stream reader's buffer limit (it holds up to twice that)


@dataclass
class _Session:
    """What one connection negotiated."""

    structured: bool = False  # NBD_OPT_STRUCTURED_REPLY: READ answers are OFFSET_DATA chunks
    meta_export: str | None = None  # the export NBD_OPT_SET_META_CONTEXT selected base:allocation for
    allocation: bool = False  # base:allocation is on for the export in use (BLOCK_STATUS allowed)

    def flags(self, export: OpenVolume) -> int:
        base = READ_ONLY_FLAGS if export.read_only else EXPORT_FLAGS
        return base | (nbd.TF_SEND_DF if self.structured else 0)  # a READ is always one chunk


class NbdServer:
    """Serves ``attach.export(name)`` objects over NBD on an asyncio loop."""

    def __init__(self, attach: Any, *, threads: int = 8, tls: ssl.SSLContext | None = None) -> None:
        self.attach = attach
        self._tls = tls
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ebscrypt-nbd")
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._sockets: set[socket.socket] = set()  # connections in their transmission thread

    async def start(self, host: str, port: int) -> int:
        # A stream buffer of 64 KiB (asyncio's default) would pause and resume the socket
        # many times per 1 MiB write payload; a request's payload fits in 2 × READ_LIMIT.
        self._server = await asyncio.start_server(self._client, host, port, reuse_address=True, limit=READ_LIMIT)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._clients):
            writer.close()
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # its thread sees the end and finishes
            except OSError:
                pass
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except asyncio.TimeoutError:
                pass
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ------------------------------------------------------------------ connection

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self._clients.add(writer)
        session = _Session()
        export: OpenVolume | None = None
        try:
            export = await self._negotiate(reader, writer, session)
            if export is not None:
                log.info("nbd: %s connected to %s%s", peer, export.volume_id, " (read-only)" if export.read_only else "")
                if self._tls is None:
                    await self._transmit_in_thread(reader, writer, export, session)
                else:
                    await self._transmit(reader, writer, export, session)
        except nbd.ProtocolError as exc:
            log.warning("nbd: %s broke the protocol: %s; disconnected", peer, exc)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("nbd: %s went away", peer)
        except Exception:
            log.exception("nbd: connection from %s failed", peer)
        finally:
            self._clients.discard(writer)
            writer.close()
            if export is not None:
                await self._release(export)

    async def _release(self, export: OpenVolume) -> None:
        release = getattr(self.attach, "release", None)
        if release is not None:
            await self._run(release, export)

    async def _negotiate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         session: _Session) -> OpenVolume | None:
        writer.write(nbd.server_greeting())
        await writer.drain()
        flags = nbd.parse_client_flags(await reader.readexactly(4))
        no_zeroes = bool(flags & nbd.FLAG_NO_ZEROES)
        secure = self._tls is None  # nothing to wait for without TLS (loopback only)
        while True:
            option, length = nbd.parse_option_header(await reader.readexactly(nbd.OPTION_HEADER_SIZE))
            data = await reader.readexactly(length)
            if option == nbd.OPT_STARTTLS and self._tls is not None:
                if secure or length:
                    writer.write(nbd.option_reply(option, nbd.REP_ERR_INVALID))
                    await writer.drain()
                    continue
                writer.write(nbd.option_reply(option, nbd.REP_ACK))
                await writer.drain()
                await writer.start_tls(self._tls, ssl_handshake_timeout=30)
                secure = True
                continue
            if not secure and option != nbd.OPT_ABORT:
                if option == nbd.OPT_EXPORT_NAME:
                    return None  # no error reply exists for it: hang up
                writer.write(nbd.option_reply(option, nbd.REP_ERR_TLS_REQD, b"TLS is required"))
                await writer.drain()
                continue
            if option == nbd.OPT_EXPORT_NAME:
                export = await self._lookup(data)
                if export is None:
                    return None  # this option has no error reply: hanging up is the answer
                session.allocation = session.meta_export == data.decode("utf-8", "replace")
                writer.write(nbd.export_name_reply(export.size, session.flags(export), no_zeroes))
                await writer.drain()
                return export
            if option == nbd.OPT_ABORT:
                writer.write(nbd.option_reply(option, nbd.REP_ACK))
                await writer.drain()
                return None
            if option == nbd.OPT_LIST:
                reply = nbd.REP_ACK if length == 0 else nbd.REP_ERR_INVALID
                writer.write(nbd.option_reply(option, reply))
            elif option in (nbd.OPT_INFO, nbd.OPT_GO):
                try:
                    request = nbd.parse_info_request(data)
                except (ValueError, UnicodeDecodeError):
                    writer.write(nbd.option_reply(option, nbd.REP_ERR_INVALID, b"malformed request"))
                    await writer.drain()
                    continue
                export = await self._lookup(request.name.encode())
                if export is None:
                    message = f"{request.name!r} is not a volume attached to a running instance"
                    writer.write(nbd.option_reply(option, nbd.REP_ERR_UNKNOWN, message.encode()[:4096]))
                    await writer.drain()
                    continue
                writer.write(nbd.option_reply(option, nbd.REP_INFO, nbd.info_export(export.size, session.flags(export))))
                if nbd.INFO_BLOCK_SIZE in request.info:
                    writer.write(nbd.option_reply(option, nbd.REP_INFO, nbd.info_block_size()))
                writer.write(nbd.option_reply(option, nbd.REP_ACK))
                await writer.drain()
                if option == nbd.OPT_GO:
                    session.allocation = session.meta_export == request.name
                    return export
                await self._release(export)  # INFO only looked
                continue
            elif option == nbd.OPT_STRUCTURED_REPLY:
                if length:
                    writer.write(nbd.option_reply(option, nbd.REP_ERR_INVALID, b"no data expected"))
                else:
                    session.structured = True
                    writer.write(nbd.option_reply(option, nbd.REP_ACK))
            elif option in (nbd.OPT_LIST_META_CONTEXT, nbd.OPT_SET_META_CONTEXT):
                setting = option == nbd.OPT_SET_META_CONTEXT
                try:
                    meta = nbd.parse_meta_context_request(data)
                except (ValueError, UnicodeDecodeError):
                    writer.write(nbd.option_reply(option, nbd.REP_ERR_INVALID, b"malformed request"))
                    await writer.drain()
                    continue
                if setting and not session.structured:
                    writer.write(nbd.option_reply(option, nbd.REP_ERR_INVALID, b"structured replies first"))
                    await writer.drain()
                    continue
                names = nbd.meta_contexts_matching(meta.queries, listing=not setting)
                for name in names:
                    writer.write(nbd.meta_context_reply(option, nbd.BASE_ALLOCATION_ID if setting else 0, name))
                if setting:  # a later SET replaces an earlier one
                    session.meta_export = meta.name if names else None
                writer.write(nbd.option_reply(option, nbd.REP_ACK))
            else:  # STARTTLS without TLS, EXTENDED_HEADERS, ...
                writer.write(nbd.option_reply(option, nbd.REP_ERR_UNSUP))
            await writer.drain()

    async def _lookup(self, raw_name: bytes) -> OpenVolume | None:
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if len(name) > nbd.MAX_NAME_LENGTH:
            return None
        export: OpenVolume | None = await self._run(self.attach.export, name)
        return export

    # ------------------------------------------------------------------ transmission

    async def _transmit_in_thread(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                  export: OpenVolume, session: _Session) -> None:
        """Plain TCP: the transmission phase leaves the event loop for a thread of its own
        on a blocking socket. Payloads are received straight into their buffer and sent
        from it (asyncio's streams copy a 1 MiB payload several times and wake the loop per
        64 KiB), and the loop stays free for the API. Same protocol behaviour as
        :meth:`_transmit` (which TLS connections keep: the TLS layer is asyncio's)."""
        transport: Any = writer.transport
        # A TCP transport reads and writes (asyncio's, or uvloop's — not an
        # asyncio.ReadTransport subclass — when serve's --loop picks uvloop).
        transport.pause_reading()
        raw = transport.get_extra_info("socket")
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        sock.setblocking(True)
        # A client that stops reading its replies cannot hold a pool thread in send() for
        # long (the pool serves every connection): after SEND_TIMEOUT it loses its connection.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_TIMEOUT, 0))
        # A conforming client sends nothing before GO's answer; whatever a broken one did is
        # handed over, so nothing is lost or reordered.
        prefix = bytes(getattr(reader, "_buffer", b""))
        transport.abort()  # closes the loop's descriptor; the duplicate keeps the connection
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        conn = _ThreadedConnection(sock, export, session, self._pool, prefix)
        self._sockets.add(sock)

        def run() -> None:
            try:
                conn.run()
            finally:
                try:
                    loop.call_soon_threadsafe(_resolve, done)
                except RuntimeError:  # the loop is gone (shutdown): nobody waits any more
                    pass

        threading.Thread(target=run, name=f"ebscrypt-nbd-{export.volume_id}", daemon=True).start()
        try:
            await done
        finally:
            self._sockets.discard(sock)

    async def _transmit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        export: OpenVolume, session: _Session) -> None:
        budget = _Budget(IN_FLIGHT, IN_FLIGHT_BYTES)
        drain = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                req = nbd.parse_request(await reader.readexactly(nbd.REQUEST_SIZE))
                size = _in_flight_size(req)
                if size is None:
                    return
                await budget.take(size)  # before reading a payload: memory per connection is bounded
                payload = await reader.readexactly(req.length) if req.command == nbd.CMD_WRITE else b""
                reply = _inline(req, payload, export, session.structured)
                if reply is not None:  # served from the cache on this loop: no thread, no task
                    budget.give(size)
                    if not writer.is_closing():
                        for part in reply:  # header, then the data as is (no concatenated copy)
                            writer.write(part)
                        if writer.transport.get_write_buffer_size() > IN_FLIGHT_BYTES // 4:
                            async with drain:
                                await writer.drain()
                    continue
                task = asyncio.create_task(self._serve(req, payload, export, session, writer, drain, budget, size))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            # Requests received in full are answered (a flush among them is honoured);
            # a request cut off mid-way was never started.
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, req: nbd.Request, payload: bytes, export: OpenVolume, session: _Session,
                     writer: asyncio.StreamWriter, drain: asyncio.Lock, budget: "_Budget", size: int) -> None:
        try:
            error, data = await self._run(execute, req, payload, export, session)
            if not writer.is_closing():
                # All parts of a reply in one go on the loop: concurrent replies never interleave.
                for part in _reply(req, error, data, session.structured):
                    writer.write(part)
                async with drain:
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            budget.give(size)

def _in_flight_size(req: nbd.Request) -> int | None:
    """The bytes ``req`` holds while in flight (its payload or its data), for the
    connection's memory budget; None for a disconnect. A write larger than the maximum is
    a protocol error: the stream cannot be resynchronised past a payload we will not read."""
    if req.command == nbd.CMD_DISC:
        return None
    if req.command == nbd.CMD_WRITE and req.length > nbd.MAX_PAYLOAD:
        raise nbd.ProtocolError(f"write of {req.length} bytes exceeds the maximum")
    return min(req.length, nbd.MAX_PAYLOAD) if req.command in (nbd.CMD_READ, nbd.CMD_WRITE) else 0


def execute(req: nbd.Request, payload: bytes | bytearray, export: OpenVolume, session: _Session) -> tuple[int, Any]:
    """Serve one request (blocking: disk, crypto): (error, data), data being the bytes read
    for READ, the extents for BLOCK_STATUS."""
    export.activity += 1  # (heap.IdleTrim: memory is given back only when every export is quiet)
    fua = bool(req.flags & nbd.CMD_FLAG_FUA)
    cmd = req.command
    try:
        if export.read_only and cmd in (nbd.CMD_WRITE, nbd.CMD_TRIM, nbd.CMD_WRITE_ZEROES):
            return nbd.EPERM, b""  # a snapshot: nothing is written
        if cmd == nbd.CMD_BLOCK_STATUS:
            if not session.allocation or req.length == 0 or not export.check_range(req.offset, req.length):
                return nbd.EINVAL, b""
            extents = export.allocation(req.offset, req.length, BLOCK_STATUS_BLOCKS)
            if req.flags & nbd.CMD_FLAG_REQ_ONE:
                extents = extents[:1]
            return 0, [(n, nbd.STATE_HOLE | nbd.STATE_ZERO if hole else 0) for n, hole in extents]
        if cmd == nbd.CMD_READ:
            if req.length > nbd.MAX_PAYLOAD:
                return nbd.EOVERFLOW if req.length else nbd.EINVAL, b""
            if not export.check_range(req.offset, req.length):
                return nbd.EINVAL, b""
            return 0, export.read(req.offset, req.length)
        if cmd == nbd.CMD_WRITE:
            if not export.check_range(req.offset, req.length):
                return nbd.ENOSPC, b""
            export.write(req.offset, payload, fua=fua)
            return 0, b""
        if cmd == nbd.CMD_FLUSH:
            export.flush()
            return 0, b""
        if cmd in (nbd.CMD_TRIM, nbd.CMD_WRITE_ZEROES):
            if not export.check_range(req.offset, req.length):
                return (nbd.ENOSPC if cmd == nbd.CMD_WRITE_ZEROES else nbd.EINVAL), b""
            export.zero(req.offset, req.length, fua=fua)
            return 0, b""
        return nbd.EINVAL, b""  # CACHE, RESIZE, unknown: not offered
    except ReadOnly:
        return nbd.EPERM, b""
    except VolumeClosed:
        return nbd.ESHUTDOWN, b""  # detached (or instance stopped) meanwhile
    except Exception:
        log.exception("nbd: %s command %d at %d+%d failed", export.volume_id, cmd, req.offset, req.length)
        return nbd.EIO, b""




def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class _ThreadedConnection:
    """One connection's transmission phase on a blocking socket: this thread reads requests
    and serves those the cache answers at once (``_inline``); the others go to the pool,
    which sends their replies. One lock orders sends, so replies never interleave.
    Replies served here wait in ``_out`` while more requests are already received, and
    go out together before the thread next waits for the client (one system call for
    a queue of small requests rather than one each)."""

    def __init__(self, sock: socket.socket, export: OpenVolume, session: _Session,
                 pool: ThreadPoolExecutor, prefix: bytes) -> None:
        self.sock, self.export, self.session, self.pool = sock, export, session, pool
        # Received bytes not yet used: requests are parsed from here (one recv brings many
        # small ones); a large payload is received straight into its own buffer.
        self._buf = bytearray(max(RECV_BUFFER, len(prefix)))
        self._view = memoryview(self._buf)
        self._buf[:len(prefix)] = prefix
        self._start, self._end = 0, len(prefix)
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._requests, self._bytes = IN_FLIGHT, IN_FLIGHT_BYTES
        self._broken = False
        self._out: list[bytes | bytearray] = []
        self._out_bytes = 0
        # Replies of small READs served on this thread, each assembled in place — its header,
        # then the data the volume reads straight after it — and sent with the others queued
        # (``_flush_out``): no answer buffer, reply tuple, list nor join per request.
        self._obuf = bytearray(COALESCE + nbd.READ_HEADER_SIZE + HOT_READ_MAX)
        self._oview = memoryview(self._obuf)
        self._opos = 0
        self._ohead = nbd.READ_HEADER_SIZE if session.structured else nbd.SIMPLE_HEADER_SIZE
        # Write payload buffers whose request is done, reused for the next payload of the
        # same size (a sequential writer's 1 MiB requests): no allocation, zero-filling and
        # fresh pages per request. Nothing keeps a payload once its write returned (the
        # cache and the journal copy it; a direct write seals and writes it before).
        self._spare: list[bytearray] = []
        # After a large write, receive no more than what is asked for: the next request is
        # likely another large write, whose payload should land in its own buffer, not in
        # ``_buf`` first (a receive of 256 KiB for a 28-byte header took a quarter of the
        # next 1 MiB payload, copied again into place: ``_recv``; bench/README.md S7).
        self._exact = False

    def run(self) -> None:
        peer = "?"
        try:
            peer = str(self.sock.getpeername())
            self._loop()
        except nbd.ProtocolError as exc:
            log.warning("nbd: %s broke the protocol: %s; disconnected", peer, exc)
        except (ConnectionError, EOFError, OSError):
            log.info("nbd: %s went away", peer)
        except Exception:
            log.exception("nbd: connection from %s failed", peer)
        finally:
            # Requests received in full are answered (a flush among them is honoured);
            # a request cut off mid-way was never started.
            try:
                self._flush_out()
            except OSError:
                pass
            with self._cond:
                while self._requests < IN_FLIGHT:
                    self._cond.wait()
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def _loop(self) -> None:
        hot_reads = self._hot_reads
        while True:
            fields = self._next_fields()
            if fields[1] == nbd.CMD_READ and fields[4] <= HOT_READ_MAX and hot_reads(*fields):
                self._exact = False
                continue
            req = nbd.Request(*fields)
            self._exact = req.command == nbd.CMD_WRITE and req.length >= SPARE_MIN
            if req.command == nbd.CMD_READ:
                # A read the volume answers at once holds nothing but its reply, which waits
                # in ``_out`` (bounded): no budget taken nor given back (two condition
                # round trips per 4 KiB read).
                reply = _inline(req, b"", self.export, self.session.structured)
                if reply is not None:
                    self._queue(reply)
                    continue
            size = _in_flight_size(req)
            if size is None:
                return
            self._take(size)  # before reading a payload: memory per connection is bounded
            try:
                payload = self._recv(req.length, self._spare_buffer(req.length)) if req.command == nbd.CMD_WRITE else bytearray()
                reply = _inline(req, payload, self.export, self.session.structured)
            except BaseException:
                self._give(size)
                raise
            if reply is not None:
                self._give(size, payload)
                self._queue(reply)
                continue
            try:
                self.pool.submit(self._serve, req, payload, size)
            except BaseException:  # the server is shutting down
                self._give(size)
                raise

    def _next_fields(self) -> tuple[int, int, int, int, int]:
        """The next request header's fields (:func:`nbd.unpack_request_from`), parsed where
        it lies in the receive buffer when all of it has arrived (a queue of small requests
        comes in one recv), else received."""
        if self._end - self._start >= nbd.REQUEST_SIZE:
            at = self._start
            self._start += nbd.REQUEST_SIZE
            return nbd.unpack_request_from(self._buf, at)
        return nbd.unpack_request_from(bytes(self._recv(nbd.REQUEST_SIZE)), 0)

    def _hot_reads(self, flags: int, _command: int, handle: int, offset: int, length: int) -> bool:
        """A READ of at most HOT_READ_MAX bytes, and the small READs received right behind
        it (a client's queue: one receive brings many), served here as far as the volume
        answers them at once (``OpenVolume.try_read_batch_into``: its lock and checks once
        for the queue): each one's data read straight into the output buffer behind the
        room for its header, then the headers packed. False: the first was not served,
        nothing queued (it goes the general way, which answers it — an error included).
        Those behind it that were not served stay in the receive buffer, parsed next."""
        export = self.export
        if flags & nbd.CMD_FLAG_FUA or not export.check_range(offset, length):
            export.activity += 1
            return False
        head, oview = self._ohead, self._oview
        at = self._opos
        if at + head + length > len(self._obuf):
            self._flush_out()
            at = 0
        # (offset, where its data goes) of each read; (handle, offset, length, header at) to answer
        reads = [(offset, oview[at + head:at + head + length])]
        answers = [(handle, offset, length, at)]
        at += head + length
        buf, start, end, room = self._buf, self._start, self._end, len(self._obuf)
        size = export.size
        while end - start >= nbd.REQUEST_SIZE and len(reads) < HOT_BATCH:
            magic, flags, command, handle, offset, length = _REQUEST.unpack_from(buf, start)
            if (magic != nbd.REQUEST_MAGIC or command != nbd.CMD_READ or length > HOT_READ_MAX
                    or flags & nbd.CMD_FLAG_FUA or offset + length > size or at + head + length > room):
                break  # (parsed again as the next request: a bad magic is refused there)
            reads.append((offset, oview[at + head:at + head + length]))
            answers.append((handle, offset, length, at))
            at += head + length
            start += nbd.REQUEST_SIZE
        export.activity += len(reads)
        served = export.try_read_batch_into(reads)
        if not served:
            return False  # (what it may have left there is overwritten by the next reply)
        self._start += (served - 1) * nbd.REQUEST_SIZE  # (the first was taken already)
        obuf = self._obuf
        if self.session.structured:  # (nbd.pack_read_header_into, inline: one call a read fewer)
            for handle, offset, length, at in answers[:served]:
                _READ_CHUNK.pack_into(obuf, at, nbd.STRUCTURED_REPLY_MAGIC, nbd.REPLY_FLAG_DONE,
                                      nbd.REPLY_TYPE_OFFSET_DATA, handle, 8 + length, offset)
        else:
            for handle, _offset, _length, at in answers[:served]:
                _SIMPLE.pack_into(obuf, at, nbd.SIMPLE_REPLY_MAGIC, 0, handle)
        _handle, _offset, length, at = answers[served - 1]
        self._opos = at + head + length  # (after the last reply served)
        if self._opos >= COALESCE:
            self._flush_out()
        return True

    def _queue(self, reply: tuple[bytes | bytearray, ...]) -> None:
        """A reply served on this thread: sent with the next ones (``_flush_out``)."""
        self._out.extend(reply)
        self._out_bytes += sum(len(part) for part in reply)
        if self._out_bytes >= COALESCE:
            self._flush_out()

    def _serve(self, req: nbd.Request, payload: bytearray, size: int) -> None:
        try:
            error, data = execute(req, payload, self.export, self.session)
            self._send(_reply(req, error, data, self.session.structured))
        except OSError:
            pass  # the client went away: the reading side notices and ends
        finally:
            self._give(size, payload)

    def _spare_buffer(self, n: int) -> bytearray | None:
        """A payload buffer of ``n`` bytes given back by a finished write, if any."""
        if n < SPARE_MIN:
            return None
        with self._cond:
            for k, buf in enumerate(self._spare):
                if len(buf) == n:
                    return self._spare.pop(k)
        return None

    def _recv(self, n: int, out: bytearray | None = None) -> bytearray:
        """Exactly ``n`` bytes of the stream (EOFError if it ends first), into ``out`` (a
        buffer of ``n`` bytes to reuse) or a new buffer."""
        if out is None:
            out = bytearray(n)
        view = memoryview(out)
        pos = self._buffered(view)
        while pos < n:  # the buffer is used up: the client is waited for
            self._flush_out()
            direct = n - pos >= RECV_BUFFER // 2 or (self._exact and n >= SPARE_MIN)
            if direct:
                got = self.sock.recv_into(view[pos:])  # a large payload: straight into place
            else:
                # (many small requests come in one receive; after a large write, only what
                # is missing: the next payload goes straight into place)
                got = self.sock.recv_into(self._view, n - pos if self._exact else 0)
                self._start, self._end = 0, got
            if not got:
                raise EOFError("closed mid-request" if pos else "closed")
            pos += got if direct else self._buffered(view[pos:])
        return out

    def _buffered(self, view: memoryview) -> int:
        k = min(self._end - self._start, len(view))
        if k:
            view[:k] = self._view[self._start:self._start + k]
            self._start += k
        return k

    def _flush_out(self) -> None:
        if self._out or self._opos:
            parts: list[bytes | bytearray | memoryview] = [self._oview[:self._opos]] if self._opos else []
            parts += self._out
            self._out, self._out_bytes, self._opos = [], 0, 0
            self._send(parts)  # (returns once all is sent: the output buffer is free again)

    def _send(self, parts: tuple[bytes | bytearray, ...] | list[bytes | bytearray | memoryview]) -> None:
        with self._send_lock:
            if self._broken:
                return
            try:
                if len(parts) > 1 and sum(len(p) for p in parts) <= COALESCE:
                    self.sock.sendall(b"".join(parts))  # one system call for small replies
                else:
                    _send_all(self.sock, parts)
            except OSError:
                self._broken = True  # a reply half sent: nothing more can follow it
                raise

    def _take(self, size: int) -> None:
        with self._cond:
            while self._requests <= 0 or self._bytes < size:
                self._cond.wait()
            self._requests -= 1
            self._bytes -= size

    def _give(self, size: int, payload: bytearray | None = None) -> None:
        with self._cond:
            self._requests += 1
            self._bytes += size
            if (payload is not None and SPARE_MIN <= len(payload) <= SPARE_MAX
                    and len(self._spare) < SPARE_BUFFERS):
                self._spare.append(payload)
            self._cond.notify_all()


def _send_all(sock: socket.socket, parts: tuple[bytes | bytearray, ...] | list[bytes | bytearray | memoryview]) -> None:
    """Send the parts in order as one gathered write (``sendmsg``: a large read's header
    and payload in one system call and one segment train, neither copied in Python),
    again from where a partial send stopped."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views[:IOV_BATCH])
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


class _Budget:
    """Requests and payload bytes one connection may hold at once. Only the connection's
    reading loop waits on it (one waiter), so an event is enough."""

    def __init__(self, requests: int, nbytes: int) -> None:
        self._requests, self._bytes = requests, nbytes
        self._freed = asyncio.Event()

    async def take(self, size: int) -> None:
        while self._requests <= 0 or self._bytes < size:
            self._freed.clear()
            await self._freed.wait()
        self._requests -= 1
        self._bytes -= size

    def give(self, size: int) -> None:
        self._requests += 1
        self._bytes += size
        self._freed.set()


def _reply(req: nbd.Request, error: int, data: Any, structured: bool) -> tuple[bytes | bytearray, ...]:
    """The reply to ``req`` (header, then data if any): simple, or structured where
    negotiated (always for READ then, as the protocol requires; BLOCK_STATUS has no other
    form). Written in one go on the loop, so replies to concurrent requests never interleave."""
    if req.command == nbd.CMD_BLOCK_STATUS and not error:
        return (nbd.block_status_reply(req.handle, nbd.BASE_ALLOCATION_ID, data),)
    if structured and req.command == nbd.CMD_READ:
        if error:
            return (nbd.structured_error(req.handle, error),)
        return nbd.structured_read_header(req.handle, req.offset, len(data)), data
    return (nbd.simple_reply(req.handle, error), data) if data else (nbd.simple_reply(req.handle, error),)


def _inline(req: nbd.Request, payload: bytes | bytearray, export: OpenVolume,
            structured: bool) -> tuple[bytes | bytearray, ...] | None:
    """The reply to a READ or WRITE (no FUA) the volume can serve from its cache at once
    (see ``OpenVolume.try_read``), or None: the request goes to a worker thread."""
    export.activity += 1
    if req.flags & nbd.CMD_FLAG_FUA or not export.check_range(req.offset, req.length):
        return None
    if req.command == nbd.CMD_READ and req.length <= nbd.MAX_PAYLOAD:
        data = export.try_read(req.offset, req.length)
        return None if data is None else _reply(req, 0, data, structured)
    if req.command == nbd.CMD_WRITE and export.try_write(req.offset, payload):
        return (nbd.simple_reply(req.handle),)
    return None


def tls_context(cert: Any, key: Any) -> ssl.SSLContext:
    """The server side of NBD's STARTTLS: X.509 certificate and key (PEM), TLS ≥ 1.2."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def start(runtime: Any, host: str, port: int) -> tuple[NbdServer, int]:
    settings = runtime.settings
    tls = tls_context(settings.nbd_tls_cert, settings.nbd_tls_key) if settings.nbd_tls_cert else None
    server = NbdServer(runtime.attach, tls=tls)
    bound = await server.start(host, port)
    return server, bound
