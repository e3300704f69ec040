"""Describe at scale in process: the handler + the XML of one request, no HTTP (issue 15),
for a tree's code on rows written by bench_describe_scale.fill; CPU by
``time.process_time``, minimum of ``--repeat``; ``--profile`` prints cProfile's top
functions of the same calls instead.

    python bench/describe_inproc.py KIND N [--tree DIR] [--repeat 30] [--profile] [--data DIR] [--cold]

KIND: snapshots, volumes or images; N: rows written (once per --data directory, kept).
Cases: a page of MaxResults=1000 after the first 5 ids (volumes: clamped to 500), the
kms-key-id filter (images: name=one-percent-*) and the tag:Name filter (1% of N each).
Run two trees alternately (``--tree /tmp/before``) to compare: each prints its own figures.
"""

from __future__ import annotations

from pathlib import Path

import argparse
import sys

# This directory holds bench/profile.py, which would shadow the standard ``profile``
# that cProfile imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import cProfile  # noqa: E402
import pstats  # noqa: E402
import time
from types import SimpleNamespace
from typing import Any


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("snapshots", "volumes", "images"))
    p.add_argument("n", type=int)
    p.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    p.add_argument("--data", type=Path, default=Path("/tmp/describe-inproc"))
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--only", help="one case: page, second, tag")
    p.add_argument("--cold", action="store_true", help="keep no memo texts (xml_writer MEMO_ENTRIES = 0): every "
                   "call renders as the first listing after a start does")
    args = p.parse_args()
    sys.path.insert(0, str(args.tree))
    here = Path(__file__).resolve().parent.parent
    from ebscrypt.context import Caller, RequestContext
    from ebscrypt.storage.db import Database
    from ebscrypt.wire.codec import codec_for
    from ebscrypt.wire.codec import xml_writer

    if args.cold and hasattr(xml_writer.XmlWriters, "MEMO_ENTRIES"):
        xml_writer.XmlWriters.MEMO_ENTRIES = 0  # each text dropped before the next is kept

    data = args.data / f"{args.kind}-{args.n}-{args.tree.name}"
    db_path = data / "metadata.db"
    fresh = not db_path.exists()
    data.mkdir(parents=True, exist_ok=True)
    db = Database(f"sqlite:///{db_path}")
    if fresh:
        sys.path.insert(0, str(here))
        from bench.bench_describe_scale import fill
        fill(data, args.kind, 0, args.n)
    import bench.bench_describe_scale as scale  # noqa: F401 (the kinds' parameters)
    from ebscrypt.services.ec2 import images, snapshots, volumes

    operation, handler, owner = {
        "snapshots": ("DescribeSnapshots", snapshots.describe_snapshots, {"OwnerIds": ["self"]}),
        "volumes": ("DescribeVolumes", volumes.describe_volumes, {}),
        "images": ("DescribeImages", images.describe_images, {"Owners": ["self"]}),
    }[args.kind]
    second = scale.KINDS[args.kind][3]
    codec = codec_for("ec2")
    model = codec.service_model.operation_model(operation)
    runtime = SimpleNamespace(db=db, engines={}, settings=SimpleNamespace(auth="dev"))
    ctx = RequestContext(Caller(scale.ACCOUNT, scale.REGION), runtime, "r", "ec2", operation)  # type: ignore[arg-type]
    first = handler(ctx, dict(owner, MaxResults=5))
    cases = {"page": dict(owner, MaxResults=1000, NextToken=first["NextToken"]),
             "second": dict(owner, Filters=[second]),
             "tag": dict(owner, Filters=[{"Name": "tag:Name", "Values": ["one-percent"]}])}

    def call(params: dict[str, Any]) -> int:
        return len(codec.serialize(model, handler(ctx, params), "rid").body)

    for name, params in cases.items():
        if args.only and name != args.only:
            continue
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.repeat):
                call(params)
            prof.disable()
            print(f"== {args.kind} {args.n} {name}")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
            continue
        best, size = float("inf"), 0
        for _ in range(args.repeat):
            t0 = time.process_time()
            size = call(params)
            best = min(best, time.process_time() - t0)
        print(f"{args.tree.name:>12} {args.kind:>9} {args.n:>7} {name:>6} {best * 1000:8.2f} ms  {size:>8} bytes"
              + ("  (cold)" if args.cold else ""))
    db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
