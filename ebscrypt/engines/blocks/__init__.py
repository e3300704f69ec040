"""Block engine: encrypted 512 KiB block store, snapshot lineage, copies that re-encrypt.

See :mod:`ebscrypt.engines.blocks.engine` for the API (``runtime.blocks``; import it from
there). ``BlockEngine`` is put together from: ``engine`` (lifecycle, write/read, listings),
``lineage`` (share, changed_blocks, release, GC, compaction), ``reencrypt`` (copies under
another key; ``workers`` runs in the worker processes), ``maintenance`` (periodic tasks,
sweep, sweep_orphans); ``errors`` and ``records`` hold its exceptions and records.
``crypto`` and ``store`` are its layers. It knows nothing of EC2 or of AWS's errors: the
EBS direct APIs over it are ``ebscrypt.engines.ebs``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ebscrypt.engines.blocks.engine import BlockEngine
    from ebscrypt.engines.blocks.store import ObjectStore


def open_store(settings: Any) -> ObjectStore:
    """The object store the settings name: ``--blocks s3://...``, ``--blocks DIR`` (a
    directory several processes of one machine share), or the data dir's blocks/."""
    blocks_url = getattr(settings, "blocks_url", None)
    if blocks_url and not blocks_url.startswith("s3://"):
        from ebscrypt.engines.blocks.store import LocalDirStore

        return LocalDirStore(blocks_url)
    if blocks_url:
        from ebscrypt.engines.blocks.s3store import S3Store

        return S3Store.from_url(
            blocks_url,
            endpoint_url=getattr(settings, "s3_endpoint_url", None),
            profile=getattr(settings, "s3_profile", None),
            create_bucket=True,
        )
    from ebscrypt.engines.blocks.store import LocalDirStore

    return LocalDirStore(settings.data_dir / "blocks")


def open_engine(runtime: Any) -> BlockEngine:
    from ebscrypt.engines.blocks.engine import BlockEngine

    settings = runtime.settings
    processes = int(settings.block_workers or 0)
    # Fault injection for crash tests only: pause (seconds) after each re-encrypted batch.
    delay = float(os.environ.get("EBSCRYPT_FAULT_COPY_BATCH_DELAY", "0") or 0)
    engine = BlockEngine(
        runtime.db,
        open_store(settings),
        clock=runtime.clock,
        processes=processes,
        copy_batch_delay=delay,
    )
    if settings.primary:  # serve --workers N: the block store's sweeps run in one process of the host
        engine.start_maintenance()
    return engine
