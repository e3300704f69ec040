"""EBS direct API workload: PutSnapshotBlock of one 512 KiB block, ebscrypt next to moto.

One pending snapshot per side (StartSnapshot in setup); every call writes block 0 again
with the same data (a random 512 KiB block, its SHA-256 checksum). On ebscrypt the block
is encrypted (AES-256-GCM under the snapshot's data key) and made durable before the
answer; moto keeps the plaintext in memory.

    python bench/bench_ebs.py                 # or: python bench/run.py --only PutSnapshotBlock
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.common`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Ctx, RawCall, Workload, main

BLOCK = 524288
DATA = os.urandom(BLOCK)
CHECKSUM = base64.b64encode(hashlib.sha256(DATA).digest()).decode()


def start(ctx: Ctx) -> None:
    if "ebs_snap" not in ctx.state:
        kw = {"Encrypted": True} if ctx.side == "ebscrypt" else {}
        ctx.state["ebs_snap"] = ctx.client("ebs").start_snapshot(VolumeSize=1, **kw)["SnapshotId"]


def _params(ctx: Ctx) -> dict:
    return dict(SnapshotId=ctx.state["ebs_snap"], BlockIndex=0, BlockData=DATA, DataLength=BLOCK,
                Checksum=CHECKSUM, ChecksumAlgorithm="SHA256")


def put_block(ctx: Ctx) -> None:
    ctx.client("ebs").put_snapshot_block(**_params(ctx))


def raw_put(ctx: Ctx) -> RawCall:
    return RawCall("ebs", "put_snapshot_block", _params(ctx))


WORKLOADS = [Workload("PutSnapshotBlock(512 KiB)", put_block, setup=start, raw=raw_put, many_clients=True)]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS))
