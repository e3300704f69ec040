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
from typing import Any


def open_engine(runtime: Any) -> Any:
    from ebscrypt.engines.blocks.engine import BlockEngine
    from ebscrypt.engines.blocks.store import LocalDirStore

    settings = runtime.settings
    processes = int(settings.block_workers or 0)
    # Fault injection for crash tests only: pause (seconds) after each re-encrypted batch.
    delay = float(os.environ.get("EBSCRYPT_FAULT_COPY_BATCH_DELAY", "0") or 0)
    engine = BlockEngine(
        runtime.db,
        LocalDirStore(settings.data_dir / "blocks"),
        clock=runtime.clock,
        processes=processes,
        copy_batch_delay=delay,
    )
    engine.start_maintenance()
    return engine
