"""Attached volumes: the host's part of EBS encryption (SPEC §7, R-ATTACH-1..4).

``engine`` holds, per server process, the data keys of attached volumes (in memory only,
from attach to detach) and their open :class:`~ebscrypt.engines.attach.volume_io.OpenVolume`
objects; ``volume_io`` is byte-addressed I/O on a volume over the block engine (a bounded
write-back cache of 512 KiB blocks, evictions staged and published at the next flush,
flush durable on return); ``journal`` is a volume's write journal (small writes to
blocks not cached, appended as sealed records instead of a read-modify-write, merged
into whole blocks in batches). The NBD server (``ebscrypt.wire.nbd_server``) serves
these objects.
"""

from __future__ import annotations

from typing import Any

from ebscrypt.engines.attach.engine import AttachEngine


def open_engine(runtime: Any) -> Any:
    """This process's attached volumes: the engine itself, or — in a worker of
    ``serve --workers N`` other than the primary — the primary's, reached through
    :class:`~ebscrypt.engines.attach.remote.RemoteAttach`."""
    settings = runtime.settings
    if not settings.primary and settings.attach_address:
        from ebscrypt.engines.attach.remote import RemoteAttach

        return RemoteAttach(settings.data_dir, settings.attach_address, runtime.db)
    engine = AttachEngine(runtime, cache_blocks=settings.nbd_cache_mib * 2)  # 512 KiB blocks
    if settings.attach_address:  # the primary of several workers: the others' requests
        from ebscrypt.engines.attach.remote import AttachServer

        engine.server = AttachServer(engine, settings.attach_address)
    return engine
