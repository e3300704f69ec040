"""The NBD protocol, fixed newstyle (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md):
constants, and pure functions that parse what a client sends and encode what we answer.

Only what ebscrypt serves: fixed newstyle negotiation (NBD_OPT_EXPORT_NAME, _INFO, _GO,
_LIST, _ABORT, _STARTTLS when TLS is configured, _STRUCTURED_REPLY, _LIST_META_CONTEXT and
_SET_META_CONTEXT with the one context ``base:allocation``; everything else
NBD_REP_ERR_UNSUP), simple replies or, once negotiated, structured replies, and the
transmission commands READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS and DISC.
No I/O here: ``ebscrypt.wire.nbd_server`` drives the sockets.
All integers are big-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

# handshake flags (server) / client flags
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
CLIENT_FLAGS_KNOWN = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES

# options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

# option replies
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) | 1
REP_ERR_POLICY = (1 << 31) | 2
REP_ERR_INVALID = (1 << 31) | 3
REP_ERR_TLS_REQD = (1 << 31) | 5
REP_ERR_UNKNOWN = (1 << 31) | 6

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

# transmission flags
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8

# commands and their flags
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3

# structured replies
STRUCTURED_REPLY_MAGIC = 0x668E33EF
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) | 1

# the one metadata context served: which ranges are holes (never written) and read as zeros
META_BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 1  # its context id on every connection
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

# errors (errno values the protocol names)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

MAX_OPTION_LENGTH = 4096     # an export name is at most 4096 bytes; INFO/GO add a little
MAX_NAME_LENGTH = 4096
MAX_PAYLOAD = 32 * 1024 * 1024  # largest READ/WRITE we accept (advertised as the maximum block size)
PREFERRED_BLOCK = 4096
REQUEST_SIZE = 28
OPTION_HEADER_SIZE = 16


class ProtocolError(Exception):
    """The client broke the protocol: the connection is closed, nothing is applied."""


def server_greeting() -> bytes:
    return NBDMAGIC + struct.pack(">QH", IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def parse_client_flags(raw: bytes) -> int:
    (flags,) = struct.unpack(">I", raw)
    if not flags & FLAG_FIXED_NEWSTYLE:
        raise ProtocolError("the client does not speak fixed newstyle")
    if flags & ~CLIENT_FLAGS_KNOWN:
        raise ProtocolError(f"unknown client flags {flags:#x}")
    return int(flags)


def parse_option_header(raw: bytes) -> tuple[int, int]:
    """(option, length of its data) from the 16-byte option header."""
    magic, option, length = struct.unpack(">QII", raw)
    if magic != IHAVEOPT:
        raise ProtocolError("bad option magic")
    if length > MAX_OPTION_LENGTH + 8 + 2 * 64:
        raise ProtocolError(f"option data of {length} bytes is too long")
    return option, length


@dataclass(frozen=True)
class InfoRequest:
    name: str
    info: tuple[int, ...]


def parse_info_request(data: bytes) -> InfoRequest:
    """NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, count × u16."""
    if len(data) < 6:
        raise ValueError("short INFO/GO request")
    (name_len,) = struct.unpack_from(">I", data, 0)
    if name_len > MAX_NAME_LENGTH or 4 + name_len + 2 > len(data):
        raise ValueError("bad export name length")
    name = data[4:4 + name_len].decode("utf-8")
    (count,) = struct.unpack_from(">H", data, 4 + name_len)
    rest = data[6 + name_len:]
    if len(rest) != 2 * count:
        raise ValueError("bad information request count")
    return InfoRequest(name, struct.unpack(f">{count}H", rest) if count else ())


@dataclass(frozen=True)
class MetaContextRequest:
    name: str
    queries: tuple[str, ...]


def parse_meta_context_request(data: bytes) -> MetaContextRequest:
    """NBD_OPT_LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, count × (u32 length, query)."""
    if len(data) < 8:
        raise ValueError("short META_CONTEXT request")
    (name_len,) = struct.unpack_from(">I", data, 0)
    if name_len > MAX_NAME_LENGTH or 4 + name_len + 4 > len(data):
        raise ValueError("bad export name length")
    name = data[4:4 + name_len].decode("utf-8")
    (count,) = struct.unpack_from(">I", data, 4 + name_len)
    pos = 8 + name_len
    queries = []
    for _ in range(count):
        if pos + 4 > len(data):
            raise ValueError("bad query count")
        (qlen,) = struct.unpack_from(">I", data, pos)
        if pos + 4 + qlen > len(data):
            raise ValueError("bad query length")
        queries.append(data[pos + 4:pos + 4 + qlen].decode("utf-8"))
        pos += 4 + qlen
    if pos != len(data):
        raise ValueError("trailing bytes after the queries")
    return MetaContextRequest(name, tuple(queries))


def meta_contexts_matching(queries: tuple[str, ...], *, listing: bool) -> list[str]:
    """The contexts we serve that these queries select. LIST with no query (or the
    namespace ``base:``) lists them all; SET selects only exact names."""
    if listing and not queries:
        return [META_BASE_ALLOCATION]
    hits = [META_BASE_ALLOCATION] if any(q == META_BASE_ALLOCATION or (listing and q == "base:")
                                         for q in queries) else []
    return hits


def meta_context_reply(option: int, context_id: int, name: str) -> bytes:
    return option_reply(option, REP_META_CONTEXT, struct.pack(">I", context_id) + name.encode())


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def info_export(size: int, flags: int) -> bytes:
    return struct.pack(">HQH", INFO_EXPORT, size, flags)


def info_block_size(minimum: int = 1, preferred: int = PREFERRED_BLOCK, maximum: int = MAX_PAYLOAD) -> bytes:
    return struct.pack(">HIII", INFO_BLOCK_SIZE, minimum, preferred, maximum)


def export_name_reply(size: int, flags: int, no_zeroes: bool) -> bytes:
    """The answer to NBD_OPT_EXPORT_NAME (which has no way to say no but to hang up)."""
    return struct.pack(">QH", size, flags) + (b"" if no_zeroes else bytes(124))


class Request(NamedTuple):
    """One transmission request's header. (A named tuple: built for every request, at
    tens of thousands a second — a frozen dataclass's construction cost 6x more.)"""

    flags: int
    command: int
    handle: int
    offset: int
    length: int


def parse_request(raw: bytes) -> Request:
    return parse_request_from(raw, 0)


_REQUEST = struct.Struct(">IHHQQI")
REQUEST_STRUCT = _REQUEST  # (magic, flags, command, handle, offset, length): a server's hot path unpacks it itself


def parse_request_from(buf: bytes | bytearray | memoryview, offset: int) -> Request:
    """The request header at ``offset`` of ``buf`` (REQUEST_SIZE bytes there), unpacked in
    place: a server parses a queue of requests from one receive buffer without copies."""
    return Request(*unpack_request_from(buf, offset))


def unpack_request_from(buf: bytes | bytearray | memoryview, offset: int) -> tuple[int, int, int, int, int]:
    """:func:`parse_request_from`'s fields (flags, command, handle, offset, length) as a
    plain tuple: a server's hot path for small READs builds no Request."""
    magic, flags, command, handle, req_offset, length = _REQUEST.unpack_from(buf, offset)
    if magic != REQUEST_MAGIC:
        raise ProtocolError("bad request magic")
    return flags, command, handle, req_offset, length


_SIMPLE = struct.Struct(">IIQ")


def simple_reply(handle: int, error: int = 0) -> bytes:
    return _SIMPLE.pack(SIMPLE_REPLY_MAGIC, error, handle)


def structured_header(handle: int, kind: int, length: int, *, done: bool = True) -> bytes:
    return struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0, kind, handle, length)


_READ_CHUNK = struct.Struct(">IHHQIQ")  # a structured reply header + an OFFSET_DATA chunk's offset
# (pack_read_header_into's two layouts, for a server's hot path packing them itself)
READ_CHUNK_STRUCT, SIMPLE_STRUCT = _READ_CHUNK, _SIMPLE


def structured_read_header(handle: int, offset: int, length: int) -> bytes:
    """What precedes ``length`` bytes read at ``offset``: the whole READ as one OFFSET_DATA
    chunk (so NBD_CMD_FLAG_DF is honoured too). (One pack: it is built for every READ.)"""
    return _READ_CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, handle, 8 + length, offset)


READ_HEADER_SIZE = _READ_CHUNK.size  # what structured_read_header packs (a simple reply's header: 16)
SIMPLE_HEADER_SIZE = _SIMPLE.size


def pack_read_header_into(buf: bytearray, at: int, handle: int, offset: int, length: int, structured: bool) -> None:
    """The header of a successful READ's reply (structured: :func:`structured_read_header`;
    else :func:`simple_reply`) packed into ``buf`` at ``at``, just before the data a
    server read into place: a reply assembled in one reused buffer."""
    if structured:
        _READ_CHUNK.pack_into(buf, at, STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, handle,
                              8 + length, offset)
    else:
        _SIMPLE.pack_into(buf, at, SIMPLE_REPLY_MAGIC, 0, handle)


def structured_error(handle: int, error: int, message: str = "") -> bytes:
    msg = message.encode()[:4096]
    return structured_header(handle, REPLY_TYPE_ERROR, 6 + len(msg)) + struct.pack(">IH", error, len(msg)) + msg


def structured_done(handle: int) -> bytes:
    return structured_header(handle, REPLY_TYPE_NONE, 0)


def block_status_reply(handle: int, context_id: int, extents: list[tuple[int, int]]) -> bytes:
    """One BLOCK_STATUS chunk: (length, status flags) descriptors in order from the offset asked."""
    body = struct.pack(">I", context_id) + b"".join(struct.pack(">II", n, f) for n, f in extents)
    return structured_header(handle, REPLY_TYPE_BLOCK_STATUS, len(body)) + body
