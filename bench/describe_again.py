"""A Describe listing read again on one server: the server CPU per 1,000 items of each of
``--listings`` consecutive listings (bench_describe_scale.listing_ms: paged by 1,000 as the
CLI pages) of a data directory filled by bench_describe_scale.fill (issue 15: what a
server keeps between listings — an image's rendered mappings — shows from the second or
third listing on; the first after a start is the cold one bench_describe_scale measures).

    python bench/describe_again.py DATA_DIR KIND [--listings 4] [--tree DIR]

DATA_DIR is used as is (pass a copy); run two trees alternately to compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_describe_scale import KINDS, listing_ms  # noqa: E402
from bench.common import start_ebscrypt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("--size", type=int, default=10_000, help="the resources in DATA_DIR")
    p.add_argument("--listings", type=int, default=4)
    p.add_argument("--tree", type=Path)
    args = p.parse_args(argv)
    srv = start_ebscrypt(args.data, tree=args.tree)
    try:
        cpu = [listing_ms(srv, args.kind, args.size)[1] for _ in range(args.listings)]
    finally:
        srv.stop()
    name = args.tree.name if args.tree else "this"
    print(f"{name:>10} {args.kind} {args.size}: CPU ms per 1,000 items by listing: "
          + ", ".join(f"{c:.1f}" for c in cpu), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
