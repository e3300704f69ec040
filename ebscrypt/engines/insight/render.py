"""Findings as a terminal table, JSON or CSV (``ebscrypt report --format``)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter

from ebscrypt.engines.insight.records import SEVERITIES, Finding

COLUMNS = ("severity", "code", "account", "region", "resource", "message")


def findings_json(findings: list[Finding]) -> str:
    summary = Counter(f.severity for f in findings)
    return json.dumps({"summary": {s: summary.get(s, 0) for s in SEVERITIES},
                       "findings": [f.as_dict() for f in findings]}, indent=2) + "\n"


def findings_csv(findings: list[Finding]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*COLUMNS, "details"])
    for f in findings:
        writer.writerow([f.severity, f.code, f.account, f.region, f.resource, f.message, "; ".join(f.details)])
    return out.getvalue()


def findings_table(findings: list[Finding], *, width: int | None = None) -> str:
    """Aligned columns; ``width`` (a terminal's) shortens long messages, None keeps them whole."""
    if not findings:
        return "no findings\n"
    rows = [(f.severity.upper(), f.code, f.account, f.region, f.resource, f.message) for f in findings]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for r in rows:
        head = "  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths))
        message = r[5]
        if width is not None:
            room = max(20, width - len(head) - 2)
            message = message if len(message) <= room else message[: room - 1] + "…"
        lines.append(f"{head}  {message}")
    counts = Counter(f.severity for f in findings)
    lines.append("")
    lines.append(", ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES) if counts.get(s)))
    return "\n".join(lines) + "\n"


def terminal_width() -> int | None:
    """The terminal's width when stdout is one (None when piped: nothing is cut)."""
    import sys

    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None
