"""Block objects in an S3-compatible object store (Ceph RADOS Gateway, MinIO, AWS S3).

``serve --blocks s3://BUCKET[/PREFIX] --s3-endpoint-url URL`` stores each block object as
``PREFIX/<shard>/<name>`` in BUCKET. Credentials come from boto3's usual chain
(environment, shared credentials file, instance role) or a named profile
(``--s3-profile``); never from the command line.

Why this keeps the crash design of :class:`~.store.LocalDirStore`:

- ``put`` is one PUT: S3 makes an object visible only whole (never a partial object under
  its key), and acknowledges it once stored durably (RGW: after the RADOS write is
  committed on the pool's replicas). ``Content-MD5`` makes the server reject a body
  damaged on the way. The block engine records an object only after ``put`` returned, so
  an object is referenced only after it is stored.
- ``put_many`` PUTs concurrently (a bounded thread pool: an S3 PUT is a network round
  trip, not a local flush, so concurrency is what batching buys here; a block object is
  512 KiB, below S3's 5 MiB multipart minimum, so multipart would not pay). It returns
  when all are stored; on a failure it deletes the ones already stored (best effort: the
  orphan sweep takes any left) and raises.
- ``keys()`` lists with each object's LastModified, which the orphan sweep compares with
  its minimum age (see ``maintenance.sweep_orphans``: with a shared store it never takes an
  object younger than an hour, since another process may be between storing and
  recording it).

Unreachable store, or a 5xx answer after botocore's retries: :class:`StoreUnavailable`
(a 503 to the client, retryable, with the cause). Nothing is recorded in that case.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator

from ebscrypt.engines.blocks.store import ObjectMissing, StoreUnavailable

_KEY_RE = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{32}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# Objects put at once by put_many (and connections kept per process): enough to hide the
# round trip of each PUT, few enough not to swamp a small gateway.
DEFAULT_CONCURRENCY = 16


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET[/PREFIX]`` -> (bucket, prefix without slashes at either end)."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"bad bucket name {bucket!r} in {url!r} (3-63 of a-z, 0-9, '.', '-')")
    return bucket, prefix.strip("/")


class S3Store:
    """The :class:`~.store.ObjectStore` calls over one bucket (and prefix)."""

    shared = True  # other processes (hosts) write and sweep the same objects

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        profile: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        create_bucket: bool = False,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.profile = profile
        self.concurrency = max(1, concurrency)
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None
        if create_bucket:
            self.ensure_bucket()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "S3Store":
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, **kwargs)

    def __reduce__(self) -> tuple[Callable[..., S3Store], tuple[str, str, str | None, str | None, int]]:
        # to worker processes: one store (client) per process
        return (_store_in_process, (self.bucket, self.prefix, self.endpoint_url, self.profile, self.concurrency))

    def describe(self) -> str:
        url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{url} at {self.endpoint_url}" if self.endpoint_url else url

    # ------------------------------------------------------------ client

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._new_client()
        return self._client

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(profile_name=self.profile) if self.profile else boto3.session.Session()
        config = Config(
            region_name=session.region_name or "us-east-1",
            # path-style: RGW and most self-hosted stores have no wildcard DNS for buckets
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=self.concurrency + 8,
            # Content-MD5 is sent by put (below); no aws-chunked trailer checksums, which
            # not every S3-compatible server accepts.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _name(self, key: str) -> str:
        if not _KEY_RE.match(key):
            raise ValueError(f"bad object key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (an existing one is used as it is)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _status(exc) != 404:  # 403: these credentials may not use it
                raise self._unavailable("HEAD bucket", exc) from None
        except Exception as exc:
            raise self._unavailable("HEAD bucket", exc) from None
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._unavailable("create bucket", exc) from None
        except Exception as exc:
            raise self._unavailable("create bucket", exc) from None

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"the block object store ({self.describe()}) failed on {what}: {_cause(exc)}")

    # ------------------------------------------------------------ ObjectStore

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        name = self._name(key)
        body = bytes(data)
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        try:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=body, ContentMD5=md5)
        except Exception as exc:
            raise self._unavailable(f"PUT {key}", exc) from None

    def put_many(self, items: Iterable[tuple[str, bytes | bytearray | memoryview]]) -> None:
        """Store several objects, up to ``concurrency`` PUTs at a time. Each item's data is
        copied before the next is pulled (a generator may reuse its buffer). All stored on
        return; on a failure the ones stored are deleted and the first error raised."""
        pool = self._executor()
        pending: set[Future[None]] = set()
        stored: list[str] = []
        keys: dict[Future[None], str] = {}
        error: BaseException | None = None
        try:
            for key, data in items:
                body = bytes(data)
                while len(pending) >= self.concurrency:
                    error = self._reap(pending, keys, stored, FIRST_COMPLETED) or error
                if error is not None:
                    break
                fut = pool.submit(self.put, key, body)
                keys[fut] = key
                pending.add(fut)
        except BaseException as exc:
            error = error or exc
        while pending:
            error = self._reap(pending, keys, stored, FIRST_COMPLETED) or error
        if error is not None:
            for key in stored:
                try:
                    self.delete(key)
                except Exception:
                    pass  # left to the orphan sweep
            raise error

    @staticmethod
    def _reap(pending: set[Future[None]], keys: dict[Future[None], str], stored: list[str],
              how: str) -> BaseException | None:
        done, _ = wait(pending, return_when=how)
        error = None
        for fut in done:
            pending.discard(fut)
            exc = fut.exception()
            if exc is None:
                stored.append(keys[fut])
            elif error is None:
                error = exc
        return error

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._client_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ebscrypt-s3")
        return self._pool

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        name = self._name(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=name)
            data: bytes = response["Body"].read()
            return data
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404") or _status(exc) == 404:
                raise ObjectMissing(key) from None
            raise self._unavailable(f"GET {key}", exc) from None
        except Exception as exc:
            raise self._unavailable(f"GET {key}", exc) from None

    def read_into(self, key: str, buf: bytearray) -> memoryview:
        """As :meth:`.store.LocalDirStore.read_into`: at most ``len(buf)`` bytes, so an
        object too long still shows as too long (give ``buf`` one byte more)."""
        data = self.get(key)
        n = min(len(data), len(buf))
        buf[:n] = data[:n]
        return memoryview(buf)[:n]

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """As :meth:`.store.LocalDirStore.read_ranges`: one ranged GET per (offset, length)
        (S3 answers one range per GET); a range past the end comes back short."""
        return [self._get_range(key, offset, length) for offset, length in ranges]

    def _get_range(self, key: str, offset: int, length: int) -> bytes:
        from botocore.exceptions import ClientError

        if length <= 0:
            return b""
        name = self._name(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=name, Range=f"bytes={offset}-{offset + length - 1}")
            data: bytes = response["Body"].read()
            return data[:length]
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404") or _status(exc) == 404:
                raise ObjectMissing(key) from None
            if _code(exc) == "InvalidRange" or _status(exc) == 416:
                return b""  # wholly past the end: short, as a pread would be
            raise self._unavailable(f"GET {key} bytes {offset}+{length}", exc) from None
        except Exception as exc:
            raise self._unavailable(f"GET {key} bytes {offset}+{length}", exc) from None

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)  # no error when missing
        except Exception as exc:
            raise self._unavailable(f"DELETE {key}", exc) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        name = self._name(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
            return True
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise self._unavailable(f"HEAD {key}", exc) from None
        except Exception as exc:
            raise self._unavailable(f"HEAD {key}", exc) from None

    def keys(self) -> Iterator[tuple[str, float]]:
        """Every object under the prefix as (key, LastModified in epoch seconds)."""
        start = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"][len(start) :]
                    if _KEY_RE.match(key):  # anything else under the prefix is not ours
                        yield key, obj["LastModified"].timestamp()
        except Exception as exc:
            raise self._unavailable("LIST", exc) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


_PROCESS_STORES: dict[tuple[Any, ...], S3Store] = {}


def _store_in_process(bucket: str, prefix: str, endpoint_url: str | None, profile: str | None,
                      concurrency: int) -> S3Store:
    """The store a worker process unpickles: one per process and settings (a boto3 client
    is costly to build; the key includes the pid so a forked child never shares its
    parent's connections)."""
    key = (os.getpid(), bucket, prefix, endpoint_url, profile, concurrency)
    store = _PROCESS_STORES.get(key)
    if store is None:
        store = _PROCESS_STORES[key] = S3Store(
            bucket, prefix, endpoint_url=endpoint_url, profile=profile, concurrency=concurrency
        )
    return store


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status else None


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _cause(exc: BaseException) -> str:
    status = _status(exc)
    if status is not None:
        return f"HTTP {status} {_code(exc)}".strip()
    return f"{type(exc).__name__}: {exc}"
