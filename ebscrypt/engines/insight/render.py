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


def findings_table(findings: list[Finding]) -> str:
    if not findings:
        return "no findings\n"
    width = shutil.get_terminal_size((160, 24)).columns
    rows = [(f.severity.upper(), f.code, f.account, f.region, f.message) for f in findings]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for r in rows:
        head = "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths))
        room = max(20, width - len(head) - 2)
        message = r[4] if len(r[4]) <= room else r[4][: room - 1] + "…"
        lines.append(f"{head}  {message}")
    counts = Counter(f.severity for f in findings)
    lines.append("")
    lines.append(", ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES) if counts.get(s)))
    return "\n".join(lines) + "\n"
