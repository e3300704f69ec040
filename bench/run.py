"""Run every ``bench/bench_*.py`` workload against ebscrypt and moto in one session.

    python bench/run.py [--rounds 5] [--seconds 1] [--only DescribeRegions] [--json out.json]

Both servers are started once and shared by all workloads; see bench/README.md.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import Workload, parser, run_all  # noqa: E402


def discover() -> list[Workload]:
    workloads: list[Workload] = []
    for path in sorted((REPO_ROOT / "bench").glob("bench_*.py")):
        try:
            module = importlib.import_module(f"bench.{path.stem}")
        except Exception as exc:  # a broken module is reported, the others still run
            print(f"bench/{path.name}: not loaded: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        found = getattr(module, "WORKLOADS", None)
        if not found:
            print(f"bench/{path.name}: no WORKLOADS list, skipped", file=sys.stderr)
            continue
        workloads.extend(found)
    return workloads


def main(argv: list[str] | None = None) -> int:
    args = parser("run all ebscrypt vs moto benchmarks (bench/bench_*.py)").parse_args(argv)
    workloads = discover()
    results = run_all(workloads, args)
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
