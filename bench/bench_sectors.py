"""Sector size of the block format (format 3): what each choice costs, in-process.

For sectors of 4, 16 and 64 KiB (and the whole-block format 2 as the reference), on a
local object store in a temporary directory, encrypted and plain, interleaved rounds:

- ``seal``: sealing one 512 KiB block (what every block write pays; plain: the sector
  table's SHA-256s come on top of the block's own SHA-256, which the engine computes anyway);
- ``open``: reading and opening a whole object (GetSnapshotBlock, a sequential miss,
  copies);
- ``4K read``: a random 4 KiB read of a stored object as ``BlockEngine.open_ref_range``
  does it — one open, two preads (header/table and the sectors), checks — (format 2: the
  whole object read and opened, then the 4 KiB cut out, as before format 3).

    python bench/bench_sectors.py [--blocks 48] [--rounds 5] [--reads 2000]

Medians of the rounds, in µs of CPU time per operation (process time: less disturbed by
other load than wall time). The objects sit in the page cache (the case
of the NBD benchmark's 512 MiB span): this is the CPU cost, not the disk's.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ebscrypt.engines.blocks.crypto import (  # noqa: E402
    BLOCK_SIZE,
    MAX_OBJECT_SIZE,
    NONCE,
    BlockCipher,
    DataKey,
    SectorReader,
    block_aad,
    sector_span,
    sha256_b64,
)
from ebscrypt.engines.blocks.store import LocalDirStore, new_object_key  # noqa: E402

SHIFTS = {"4 KiB": 12, "16 KiB": 14, "64 KiB": 16}


def seal_v2(key: DataKey | None, identity: str, index: int, data: bytes) -> bytes:
    """A format 2 object (whole-block), as the previous release sealed it."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if key is None:
        return b"EBSB" + bytes([2, 0]) + data
    nonce = os.urandom(NONCE)
    return b"EBSB" + bytes([2, 1]) + nonce + AESGCM(key.plaintext).encrypt(nonce, data, block_aad(key.key_id, identity, index))


def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    root = Path(tempfile.mkdtemp(prefix="bench-sectors-"))
    store = LocalDirStore(root)
    key = DataKey("dk-bench", os.urandom(32))
    data = [random.Random(i).randbytes(BLOCK_SIZE) for i in range(args.blocks)]
    rng = random.Random(1)
    results: dict[str, dict[str, list[float]]] = {}
    variants = [(f"{name} {mode}", shift, k) for name, shift in SHIFTS.items()
                for mode, k in (("enc", key), ("plain", None))]
    variants += [("format 2 enc", 0, key), ("format 2 plain", 0, None)]
    readbuf = bytearray(MAX_OBJECT_SIZE + 1)
    for rnd in range(args.rounds):
        for label, shift, k in (variants if rnd % 2 == 0 else list(reversed(variants))):
            res = results.setdefault(label, {"seal": [], "open": [], "4K read": []})
            cipher = BlockCipher(k, sector_shift=shift or 14)
            objects: list[tuple[str, int, str]] = []
            t0 = time.process_time()
            sealed_all = []
            for i, block in enumerate(data):
                ident = new_object_key()
                checksum = sha256_b64(block)
                if shift:
                    view, stored = cipher.seal_block(ident, i, block, checksum)
                    obj = bytes(view)
                else:
                    obj, stored = seal_v2(k, ident, i, block), checksum
                sealed_all.append((ident, obj))
                objects.append((ident, i, stored if k is None else checksum))
            res["seal"].append((time.process_time() - t0) / len(data) * 1e6)
            for ident, obj in sealed_all:
                store.put(ident, obj)
            t0 = time.process_time()
            for ident, i, checksum in objects:
                bytes(cipher.open(ident, i, store.read_into(ident, readbuf), checksum))
            res["open"].append((time.process_time() - t0) / len(objects) * 1e6)
            t0 = time.process_time()
            for _ in range(args.reads):
                ident, i, checksum = objects[rng.randrange(len(objects))]
                offset = rng.randrange(0, BLOCK_SIZE // 4096) * 4096
                if shift:
                    span = sector_span(k is not None, shift, offset, 4096)
                    prefix, raw = store.read_ranges(ident, [(0, cipher.prefix_size), span])
                    reader = cipher.sector_reader(ident, i, prefix, checksum)
                    assert isinstance(reader, SectorReader)
                    got = reader.open(raw, offset, 4096)
                else:
                    got = bytes(cipher.open(ident, i, store.read_into(ident, readbuf), checksum)[offset:offset + 4096])
                assert len(got) == 4096
            res["4K read"].append((time.process_time() - t0) / args.reads * 1e6)
            for ident, _i, _c in objects:
                store.delete(ident)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reads", type=int, default=2000)
    args = ap.parse_args(argv)
    results = run(args)
    print(f"{'format':18s} {'seal µs':>10s} {'open µs':>10s} {'4K read µs':>11s}")
    for label, res in results.items():
        print(f"{label:18s} " + " ".join(f"{statistics.median(res[c]):10.0f}" for c in ("seal", "open"))
              + f" {statistics.median(res['4K read']):11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
