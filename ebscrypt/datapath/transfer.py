"""``ebscrypt upload DISK.img`` and ``ebscrypt download SNAP OUT.img``.

Upload: StartSnapshot, then every non-zero 512 KiB block of the image is sent with
PutSnapshotBlock by a pool of threads (x-amz-Checksum per block, x-amz-Progress), then
CompleteSnapshot with the LINEAR aggregated checksum (SHA-256 over the per-block SHA-256
digests, ascending block index). With ``--parent``, blocks that are zero in the image
but written in the parent are sent as zeros, so the new snapshot reads exactly as the
image; with ``--parent`` and ``--base-image OLD.img`` (the image the parent holds) only
the blocks that differ from OLD.img are sent — a truly incremental upload.

Download: ListSnapshotBlocks, then GetSnapshotBlock by a pool of threads into a sparse
file of the volume's size; every block's checksum is verified.

Both print a progress bar on stderr and a one-line JSON summary on stdout (snapshot id,
aggregated checksum, blocks, bytes, seconds, MB/s). Any failure is one line on stderr
(``ebscrypt: …``) and a non-zero status, never a traceback (``EBSCRYPT_DEBUG=1`` shows
it); the input and output are checked before a snapshot is started.

The endpoint: ``--endpoint-url``, else ``$AWS_ENDPOINT_URL_EBS``, ``$AWS_ENDPOINT_URL``
(the AWS SDKs' own variables), ``$EBSCRYPT_ENDPOINT_URL``, else the local default. The
EC2 and KMS calls the commands make go to the same endpoint.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import socket
import stat
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO, Callable, Sequence
from urllib.parse import urlsplit

BLOCK_SIZE = 524288
GIB = 1024**3
_ZERO = bytes(BLOCK_SIZE)
DEFAULT_ENDPOINT_ENV = "EBSCRYPT_ENDPOINT_URL"
DEFAULT_LOCAL_ENDPOINT = "http://127.0.0.1:4566"
# Highest precedence first, after --endpoint-url: the AWS SDKs' service-specific and
# global variables, then ebscrypt's own.
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL", DEFAULT_ENDPOINT_ENV)
_ACCOUNT_RE = re.compile(r"^\d{12}$")


class CliError(Exception):
    """A failure to report as one line (``ebscrypt: <message>``) and exit status 1."""


# --------------------------------------------------------------------------- plumbing


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help=f"endpoint (default: ${', $'.join(ENDPOINT_ENVS)}, the first set, else {DEFAULT_LOCAL_ENDPOINT}; "
        "'aws' for real AWS)",
    )
    parser.add_argument("--region", default=None, help="region (default: the AWS configuration, else us-east-1)")
    parser.add_argument("--profile", default=None, help="AWS profile to use")
    parser.add_argument(
        "--account",
        default=None,
        help="ebscrypt dev auth: act as this 12-digit account (sets the access key id)",
    )
    parser.add_argument("--threads", type=int, default=16, help="concurrent requests (default 16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_endpoint(args: argparse.Namespace) -> str | None:
    """The endpoint URL to use; None means real AWS (botocore's own resolution)."""
    endpoint = args.endpoint_url
    for name in ENDPOINT_ENVS:
        if endpoint is None and os.environ.get(name):
            endpoint = os.environ[name]
    endpoint = endpoint or DEFAULT_LOCAL_ENDPOINT
    return None if endpoint == "aws" else endpoint


def check_common(args: argparse.Namespace) -> None:
    """Validate the shared options before any request is made."""
    if args.account is not None and not _ACCOUNT_RE.match(args.account):
        raise CliError(f"--account must be a 12-digit account id, not {args.account!r}")
    if args.threads < 1:
        raise CliError("--threads must be at least 1")
    endpoint = resolve_endpoint(args)
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CliError(f"the endpoint {endpoint!r} is not an http(s) URL")


def check_reachable(endpoint: str | None) -> None:
    """Fail at once, in one line, when nothing listens at a local endpoint (rather than
    after the SDK's retries)."""
    if endpoint is None or any(os.environ.get(v) for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")):
        return  # real AWS, or reached through a proxy: the SDK's own error says it (one line too)
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=10).close()
    except OSError as exc:
        raise CliError(
            f"cannot reach {endpoint}: {exc.strerror or exc} (is `ebscrypt serve` running there? "
            "--endpoint-url or $AWS_ENDPOINT_URL choose another endpoint)"
        ) from None


def make_clients(args: argparse.Namespace, threads: int, *, kms: bool = False) -> Any:
    """(ebs, ec2[, kms]) boto3 clients for the chosen endpoint, a connection per thread."""
    import boto3
    from botocore.config import Config

    endpoint = resolve_endpoint(args)
    session = boto3.Session(profile_name=args.profile) if args.profile else boto3.Session()
    region = args.region or session.region_name or "us-east-1"
    kwargs: dict[str, Any] = {}
    if args.account:
        kwargs = dict(aws_access_key_id=args.account, aws_secret_access_key="ebscrypt-dev-secret")
    elif endpoint is not None and session.get_credentials() is None:
        # A local ebscrypt in dev auth needs no real credentials: use its default account.
        kwargs = dict(aws_access_key_id="000000000000", aws_secret_access_key="ebscrypt-dev-secret")
    config = Config(
        max_pool_connections=threads + 4,
        retries={"max_attempts": 8, "mode": "adaptive"},
        connect_timeout=10,
        read_timeout=120,
    )
    ebs = session.client("ebs", endpoint_url=endpoint, region_name=region, config=config, **kwargs)
    ec2 = session.client("ec2", endpoint_url=endpoint, region_name=region, config=config, **kwargs)
    if kms:
        return ebs, ec2, session.client("kms", endpoint_url=endpoint, region_name=region, config=config, **kwargs)
    return ebs, ec2


class Progress:
    """A one-line progress bar on stderr, redrawn at most ~8 times a second."""

    def __init__(self, label: str, total: int, enabled: bool = True, verb: str = "sent") -> None:
        self.label = label
        self.verb = verb  # what the transferred count is: "sent" (upload), "received" (download)
        self.total = max(total, 1)
        self.done = 0
        self.sent = 0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self._last = 0.0
        self._last_pct = -1
        self._lock = threading.Lock()

    def advance(self, scanned: int = 0, transferred: int = 0) -> None:
        with self._lock:
            self.done += scanned
            self.sent += transferred
            self._draw()

    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        pct = int(100 * self.done / self.total)
        if not final:
            if self.tty and now - self._last < 0.125:
                return
            if not self.tty and pct // 10 == self._last_pct // 10:
                return
        self._last, self._last_pct = now, pct
        elapsed = max(now - self.start, 1e-6)
        width = 30
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        line = (
            f"{self.label} [{bar}] {pct:3d}%  {self.done / 2**20:9.1f}/{self.total / 2**20:.1f} MiB  "
            f"{self.verb} {self.sent / 2**20:.1f} MiB  {self.sent / 2**20 / elapsed:7.1f} MiB/s"
        )
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        with self._lock:
            self.done = self.total
            self._draw(final=True)


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def linear_checksum(digests: Sequence[bytes]) -> str:
    """EBS LINEAR aggregation over raw per-block SHA-256 digests in ascending index order."""
    h = hashlib.sha256()
    for d in digests:
        h.update(d)
    return base64.b64encode(h.digest()).decode()


def _bounded_map(
    threads: int, items: Any, fn: Callable[[Any], Any], on_done: Callable[[Any, Any], None]
) -> None:
    """Run ``fn`` over ``items`` (an iterator, consumed lazily) with at most 2*threads in
    flight; ``on_done(item, result)`` in the calling thread. The first error stops it."""
    with ThreadPoolExecutor(threads) as pool:
        pending: dict[Future[Any], Any] = {}
        try:
            for item in items:
                pending[pool.submit(fn, item)] = item
                if len(pending) >= 2 * threads:
                    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in done:
                        on_done(pending.pop(fut), fut.result())
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    on_done(pending.pop(fut), fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _fail(message: str) -> int:
    sys.stderr.write(f"ebscrypt: {message}\n")
    return 1


def _client_error(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if response:
        err = response.get("Error", {})
        reason = response.get("Reason")
        return f"{err.get('Code')}: {err.get('Message')}" + (f" (Reason {reason})" if reason else "")
    return str(exc)


def _describe(exc: BaseException) -> str:
    """One line for any failure: AWS errors by code, the SDK's and the OS's by their text."""
    from botocore.exceptions import BotoCoreError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, CliError):
        return str(exc)
    if getattr(exc, "response", None):
        return _client_error(exc)  # type: ignore[arg-type]
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach {exc.kwargs.get('endpoint_url')} (is `ebscrypt serve` running there?)"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found (configure them, or use --account with a local ebscrypt)"
    if isinstance(exc, BotoCoreError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}:{where}" if where else exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _run(work: Callable[[], int], pending: Callable[[], str | None] = lambda: None) -> int:
    """Run a command; report any failure as one line (and the snapshot left pending, if any)."""
    try:
        return work()
    except KeyboardInterrupt:
        message = "interrupted"
    except Exception as exc:  # a clear line rather than a traceback
        if os.environ.get("EBSCRYPT_DEBUG"):
            traceback.print_exc()
        message = _describe(exc)
    left = pending()
    if left:
        message += (
            f"; snapshot {left} was left pending (it fails by itself when its timeout ends; "
            f"or delete it: aws ec2 delete-snapshot --snapshot-id {left})"
        )
    return _fail(message)


# --------------------------------------------------------------------------- upload


def upload_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ebscrypt upload", description="Upload a disk image as an EBS snapshot.")
    parser.add_argument("image", help="raw disk image file")
    parser.add_argument(
        "--kms-key-id", default=None, help="KMS key (id, ARN, alias name or alias ARN) to encrypt the snapshot under"
    )
    parser.add_argument("--encrypted", action="store_true", help="encrypt (under the default key unless --kms-key-id)")
    parser.add_argument("--parent", default=None, help="parent snapshot id (incremental lineage)")
    parser.add_argument(
        "--base-image",
        default=None,
        help="with --parent: the image the parent was made from; only blocks that differ from it are sent",
    )
    parser.add_argument("--volume-size", type=int, default=None, help="volume size in GiB (default: image size rounded up)")
    parser.add_argument("--description", default=None)
    parser.add_argument("--timeout", type=int, default=None, help="StartSnapshot Timeout in minutes")
    parser.add_argument("--wait", action="store_true", help="wait until the snapshot is completed (real AWS)")
    _common(parser)
    args = parser.parse_args(argv)
    if args.base_image and not args.parent:
        parser.error("--base-image needs --parent (the snapshot made from that image)")
    started: dict[str, str] = {}
    return _run(lambda: _upload(args, started), lambda: started.get("SnapshotId"))


class _Source:
    """The image to upload: a file, or standard input (``-``), checked before any request."""

    def __init__(self, path: str, volume_size: int | None) -> None:
        self.path = path
        self.name = "standard input" if path == "-" else path
        if path == "-":
            self.stream: BinaryIO = sys.stdin.buffer
            mode = os.fstat(self.stream.fileno()).st_mode
            self.size: int | None = os.fstat(self.stream.fileno()).st_size if stat.S_ISREG(mode) else None
            if self.size is None and volume_size is None:
                raise CliError("reading a disk image from standard input needs --volume-size (its size is not known)")
        else:
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                raise CliError(f"cannot read {path}: {exc.strerror}") from None
            if stat.S_ISDIR(mode):
                raise CliError(f"{path} is a directory, not a disk image")
            try:
                self.stream = open(path, "rb", buffering=0)
            except OSError as exc:
                raise CliError(f"cannot read {path}: {exc.strerror}") from None
            self.size = os.fstat(self.stream.fileno()).st_size if stat.S_ISREG(mode) else None
            if stat.S_ISBLK(mode):  # a block device: its size is where it ends
                self.size = os.lseek(self.stream.fileno(), 0, os.SEEK_END)
                os.lseek(self.stream.fileno(), 0, os.SEEK_SET)
            if self.size is None and volume_size is None:
                raise CliError(f"{path} is not a regular file: give --volume-size")
        self._first: bytes | None = None
        if self.size is None:  # a pipe: read ahead, so that empty input starts no snapshot
            self._first = self.read_block()
            self.size = None if self._first else 0
        if self.size == 0:
            raise CliError(f"{self.name} is empty: there is nothing to upload")

    def read_block(self) -> bytes:
        """The next block (short only at the end; empty at EOF): pipes return partial reads."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        parts: list[bytes] = []
        want = BLOCK_SIZE
        while want:
            chunk = self.stream.read(want)
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if self.path != "-":
            self.stream.close()


def _upload(args: argparse.Namespace, started: dict[str, str]) -> int:
    check_common(args)
    if args.volume_size is not None and args.volume_size < 1:
        raise CliError(f"--volume-size must be at least 1 (GiB), not {args.volume_size}")
    if args.base_image and not os.path.isfile(args.base_image):
        raise CliError(f"cannot read --base-image {args.base_image}: not a file")
    source = _Source(args.image, args.volume_size)
    try:
        return _upload_from(args, source, started)
    finally:
        source.close()


def _upload_from(args: argparse.Namespace, source: _Source, started: dict[str, str]) -> int:
    known_size = source.size
    volume_gib = args.volume_size or max(1, -(-(known_size or 0) // GIB))
    if known_size is not None and volume_gib * GIB < known_size:
        raise CliError(f"--volume-size {volume_gib} GiB is smaller than the image ({known_size} bytes)")
    threads = args.threads
    check_reachable(resolve_endpoint(args))
    ebs, ec2, kms = make_clients(args, threads, kms=True)
    start: dict[str, Any] = {"VolumeSize": volume_gib}
    if args.parent:
        start["ParentSnapshotId"] = args.parent
    elif args.encrypted or args.kms_key_id:
        start["Encrypted"] = True
    if args.kms_key_id:
        key = args.kms_key_id
        if not (key.startswith("arn:") and ":key/" in key):  # StartSnapshot takes a key ARN only
            key = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
        start["KmsKeyArn"] = key
    if args.description:
        start["Description"] = args.description
    if args.timeout:
        start["Timeout"] = args.timeout
    t0 = time.monotonic()
    snap = ebs.start_snapshot(**start)
    snapshot_id = snap["SnapshotId"]
    started["SnapshotId"] = snapshot_id  # named in the error line if the upload fails from here
    sys.stderr.write(
        f"snapshot {snapshot_id} started ({volume_gib} GiB, "
        f"{'encrypted ' + snap.get('KmsKeyArn', '') if snap.get('SseType') != 'none' else 'unencrypted'})\n"
    )
    parent_blocks: set[int] = set()
    if args.parent:
        token = None
        while True:
            page = ebs.list_snapshot_blocks(SnapshotId=args.parent, **({"NextToken": token} if token else {}))
            parent_blocks.update(b["BlockIndex"] for b in page["Blocks"])
            token = page.get("NextToken")
            if not token:
                break
    volume_blocks = volume_gib * GIB // BLOCK_SIZE
    progress = Progress("upload", known_size or volume_gib * GIB, not args.no_progress)
    digests: dict[int, bytes] = {}
    scanned = {"bytes": 0, "blocks": 0}

    def blocks() -> Any:
        base = open(args.base_image, "rb", buffering=0) if args.base_image else None
        try:
            index = 0
            while True:
                data = source.read_block()
                if not data:
                    break
                if index >= volume_blocks:
                    raise CliError(f"the image is larger than --volume-size {volume_gib} GiB")
                scanned["bytes"] += len(data)
                read = len(data)
                if len(data) < BLOCK_SIZE:
                    data = data + bytes(BLOCK_SIZE - len(data))
                if base is not None:
                    old = base.read(BLOCK_SIZE)
                    old = old + bytes(BLOCK_SIZE - len(old))
                    unchanged = data == old
                else:
                    unchanged = data == _ZERO and index not in parent_blocks
                index += 1
                scanned["blocks"] = index
                if unchanged:
                    progress.advance(scanned=read)
                    continue
                yield index - 1, data
        finally:
            if base is not None:
                base.close()
        for index in sorted(i for i in parent_blocks if i >= scanned["blocks"]):
            yield index, _ZERO  # beyond the image's end but written in the parent

    def send(item: tuple[int, bytes]) -> tuple[int, bytes]:
        index, data = item
        n_blocks = -(-known_size // BLOCK_SIZE) if known_size else max(scanned["blocks"], 1)
        digest = hashlib.sha256(data).digest()
        ebs.put_snapshot_block(
            SnapshotId=snapshot_id,
            BlockIndex=index,
            BlockData=data,
            DataLength=BLOCK_SIZE,
            Checksum=base64.b64encode(digest).decode(),
            ChecksumAlgorithm="SHA256",
            Progress=min(100, int(100 * (index + 1) / n_blocks)),
        )
        return index, digest

    def done(item: tuple[int, bytes], result: tuple[int, bytes]) -> None:
        index, digest = result
        digests[index] = digest
        progress.advance(scanned=min(BLOCK_SIZE, max(0, scanned["bytes"] - index * BLOCK_SIZE)), transferred=BLOCK_SIZE)

    _bounded_map(threads, blocks(), send, done)
    progress.finish()
    checksum = linear_checksum([digests[i] for i in sorted(digests)])
    status = ebs.complete_snapshot(
        SnapshotId=snapshot_id,
        ChangedBlocksCount=len(digests),
        Checksum=checksum,
        ChecksumAlgorithm="SHA256",
        ChecksumAggregationMethod="LINEAR",
    )["Status"]
    if args.wait and status != "completed":
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id])
        status = "completed"
    elapsed = time.monotonic() - t0
    summary = {
        "SnapshotId": snapshot_id,
        "Status": status,
        "Checksum": checksum,
        "ChecksumAlgorithm": "SHA256",
        "ChecksumAggregationMethod": "LINEAR",
        "BlocksWritten": len(digests),
        "BytesScanned": scanned["bytes"],
        "Seconds": round(elapsed, 3),
        "MBps": round(scanned["bytes"] / 1e6 / elapsed, 1) if elapsed > 0 else None,
    }
    if snap.get("KmsKeyArn"):
        summary["KmsKeyArn"] = snap["KmsKeyArn"]
    print(json.dumps(summary))
    return 0


# --------------------------------------------------------------------------- download


def download_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ebscrypt download", description="Download an EBS snapshot to a sparse image.")
    parser.add_argument("snapshot_id")
    parser.add_argument("output", help="image file to write (created sparse, volume-sized)")
    _common(parser)
    args = parser.parse_args(argv)
    return _run(lambda: _download(args))


def _download(args: argparse.Namespace) -> int:
    check_common(args)
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent):
        raise CliError(f"cannot write {args.output}: the directory {parent} does not exist")
    if os.path.isdir(args.output):
        raise CliError(f"cannot write {args.output}: it is a directory (give a file name)")
    if not os.access(parent, os.W_OK):
        raise CliError(f"cannot write {args.output}: the directory {parent} is not writable")
    threads = args.threads
    check_reachable(resolve_endpoint(args))
    ebs, _ec2 = make_clients(args, threads)
    t0 = time.monotonic()
    blocks: list[tuple[int, str]] = []
    token = None
    volume_gib = 0
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=args.snapshot_id, **({"NextToken": token} if token else {}))
        volume_gib = int(page["VolumeSize"])
        blocks.extend((b["BlockIndex"], b["BlockToken"]) for b in page["Blocks"])
        token = page.get("NextToken")
        if not token:
            break
    blocks.sort()
    size = volume_gib * GIB
    progress = Progress("download", len(blocks) * BLOCK_SIZE, not args.no_progress, verb="received")
    digests: dict[int, bytes] = {}
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)  # sparse: unwritten blocks cost nothing and read as zeros

        def fetch(item: tuple[int, str]) -> tuple[int, bytes]:
            index, block_token = item
            got = ebs.get_snapshot_block(SnapshotId=args.snapshot_id, BlockIndex=index, BlockToken=block_token)
            data = got["BlockData"].read()
            digest = hashlib.sha256(data).digest()
            if len(data) != BLOCK_SIZE or base64.b64encode(digest).decode() != got["Checksum"]:
                raise IOError(f"block {index}: checksum mismatch (data corrupted in transit)")
            if data != _ZERO:
                view = memoryview(data)
                offset = index * BLOCK_SIZE
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            return index, digest

        def done(item: tuple[int, str], result: tuple[int, bytes]) -> None:
            digests[result[0]] = result[1]
            progress.advance(scanned=BLOCK_SIZE, transferred=BLOCK_SIZE)

        _bounded_map(threads, iter(blocks), fetch, done)
        os.fsync(fd)
    finally:
        os.close(fd)
    progress.finish()
    elapsed = time.monotonic() - t0
    summary = {
        "SnapshotId": args.snapshot_id,
        "Output": args.output,
        "VolumeSize": volume_gib,
        "Checksum": linear_checksum([digests[i] for i in sorted(digests)]),
        "ChecksumAlgorithm": "SHA256",
        "ChecksumAggregationMethod": "LINEAR",
        "BlocksRead": len(digests),
        "Seconds": round(elapsed, 3),
        "MBps": round(len(digests) * BLOCK_SIZE / 1e6 / elapsed, 1) if elapsed > 0 else None,
    }
    print(json.dumps(summary))
    return 0
