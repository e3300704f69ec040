"""Who is calling, where, and the engines a handler may use.

A handler receives a :class:`RequestContext`: the authenticated :class:`Caller` (account,
region from the SigV4 scope) and the process-wide :class:`Runtime` holding the engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ebscrypt.clock import Clock

if TYPE_CHECKING:  # imported only for types: engines import this module too
    from ebscrypt.engines.attach.engine import AttachEngine
    from ebscrypt.engines.blocks.engine import BlockEngine
    from ebscrypt.engines.jobs import JobRunner
    from ebscrypt.engines.kms.engine import KeyEngine
    from ebscrypt.storage.db import Database
    from ebscrypt.storage.space import SpaceMonitor


@dataclass(frozen=True)
class Caller:
    """An authenticated principal. In dev auth mode every principal is its account's root."""

    account: str
    region: str
    access_key: str = ""
    arn: str = ""
    user_id: str = ""

    def __post_init__(self) -> None:
        if not self.arn:
            object.__setattr__(self, "arn", f"arn:aws:iam::{self.account}:root")
        if not self.user_id:
            object.__setattr__(self, "user_id", self.account)


@dataclass
class Settings:
    """Server settings; every field has the embedded default."""

    data_dir: Path = Path(".ebscrypt")
    host: str = "127.0.0.1"
    port: int = 4566
    db_url: str | None = None  # default: sqlite file in data_dir
    auth: str = "dev"  # "dev" | "strict"
    default_account: str = "000000000000"
    credentials_file: Path | None = None
    # Host names served besides the loopback names and ``host`` (a load balancer's name),
    # and browser origins trusted with CORS; see ebscrypt.wire.origin.
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 2 * 1024 * 1024
    job_workers: int = 2
    block_workers: int = 2  # worker processes of the block engine's re-encrypting copies (0: none)
    # The root of trust (engines/kms/keystore.py): "file:PATH" or a pkcs11: URI; None:
    # file:<data_dir>/root.key.
    key_store: str | None = None
    console: bool = True  # the read-only web console at /_console/ (ebscrypt/console)
    nbd_host: str = "127.0.0.1"
    nbd_port: int = 0  # 0: no NBD server (the CLI's default is 10809)
    nbd_tls_cert: Path | None = None  # with nbd_tls_key: NBD requires TLS (any address)
    nbd_tls_key: Path | None = None
    # Per open (attached) volume: plaintext blocks cached in memory (write-back and read
    # cache), bounded whatever the volume's size; writes need not reach disk before a FLUSH.
    nbd_cache_mib: int = 128
    # Where block objects live: None = <data_dir>/blocks; "s3://BUCKET[/PREFIX]" = an
    # S3-compatible store (several processes or hosts share it), at s3_endpoint_url with
    # boto3's credential chain or the named profile.
    blocks_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_profile: str | None = None
    # ``serve --workers N`` (ebscrypt/supervisor.py): this process is worker ``worker_index``
    # of ``workers`` API processes sharing the port, the data dir and the database. Worker 0
    # (the primary) owns the host's state: the NBD server and attached volumes' keys, the
    # block store's sweeps; the others reach its attached volumes at ``attach_address``
    # (engines/attach/remote.py). ``clock_offset``: the clock offset they share (clock.py).
    workers: int = 1
    worker_index: int = 0
    attach_address: str | None = None
    clock_offset: Any = None
    console_key: bytes | None = None  # the dev console's cookie key, the same in every worker

    @property
    def primary(self) -> bool:
        """This process owns the host's state (always so with one worker)."""
        return self.worker_index == 0

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'metadata.db').resolve()}"


@dataclass
class Runtime:
    """The engines of one server process. Built once by :func:`ebscrypt.runtime.build_runtime`.

    The engines are registered in ``engines`` by name as they are opened (``space``,
    ``kms``, ``blocks``, ``attach``); handlers reach them through the typed properties below
    (``ctx.runtime.kms`` …). One not opened (a unit test's partial runtime) raises
    AttributeError, so ``getattr(runtime, "blocks", None)`` tells.
    """

    settings: Settings
    db: "Database"
    clock: Clock
    jobs: "JobRunner"
    engines: dict[str, Any] = field(default_factory=dict)

    def _engine(self, name: str) -> Any:
        try:
            return self.engines[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def kms(self) -> "KeyEngine":
        return self._engine("kms")  # type: ignore[no-any-return]

    @property
    def blocks(self) -> "BlockEngine":
        return self._engine("blocks")  # type: ignore[no-any-return]

    @property
    def space(self) -> "SpaceMonitor":
        return self._engine("space")  # type: ignore[no-any-return]

    @property
    def attach(self) -> "AttachEngine":
        return self._engine("attach")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RequestContext:
    caller: Caller
    runtime: Runtime
    request_id: str
    service: str
    operation: str
