"""The lineage graph as an inline SVG, laid out in columns (no JavaScript, no Graphviz).

Columns, left to right: instances, images, snapshots, volumes, data keys, KMS keys — the
order of "what is built on what". A node is a link to its page (another account's
nodes are not links: their pages would be refused); a KMS key is filled by its state.
Every node carries a <title> and the SVG an aria-label; the page also lists the edges
as a table for screen readers.
"""

from __future__ import annotations

from html import escape
from typing import Callable

from ebscrypt.engines.insight.records import Graph, Node

COLUMNS = ("instance", "image", "snapshot", "volume", "datakey", "kmskey")
COLUMN_TITLES = {"instance": "Instances", "image": "Images", "snapshot": "Snapshots", "volume": "Volumes",
                 "datakey": "Data keys", "kmskey": "KMS keys"}
KEY_STATE_CLASS = {"Enabled": "key-enabled", "Disabled": "key-disabled", "PendingDeletion": "key-pending",
                   "Deleted": "key-deleted"}
BOX_W, BOX_H, COL_W, ROW_H, TOP = 250, 34, 300, 50, 40
MAX_LABEL = 34


def _label(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _node_class(node: Node, focus: str) -> str:
    classes = ["node", f"node-{node.kind}"]
    if node.kind == "kmskey":
        classes.append(KEY_STATE_CLASS.get(node.state or "", "key-unknown"))
    if node.encrypted is False:
        classes.append("unencrypted")
    if node.foreign:
        classes.append("foreign")
    if node.id == focus:
        classes.append("focus")
    return " ".join(classes)


def render(graph: Graph, href: Callable[[Node], str | None]) -> str:
    columns = [c for c in COLUMNS if any(n.kind == c for n in graph.nodes.values())]
    placed: dict[str, tuple[float, float]] = {}
    rows = 0
    for ci, kind in enumerate(columns):
        nodes = sorted((n for n in graph.nodes.values() if n.kind == kind), key=lambda n: n.id)
        for ri, node in enumerate(nodes):
            placed[node.id] = (20 + ci * COL_W, TOP + ri * ROW_H)
        rows = max(rows, len(nodes))
    width = 40 + max(1, len(columns)) * COL_W
    height = TOP + max(1, rows) * ROW_H + 10
    # role=group, not img: an img role would hide the node links from assistive technology.
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" role="group" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" aria-label="Lineage graph around {escape(graph.focus)}">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead"/></marker></defs>']
    for ci, kind in enumerate(columns):
        parts.append(f'<text class="column-title" x="{20 + ci * COL_W}" y="20">{COLUMN_TITLES[kind]}</text>')
    for edge in graph.edges:
        if edge.source not in placed or edge.target not in placed:
            continue
        (sx, sy), (tx, ty) = placed[edge.source], placed[edge.target]
        sy, ty = sy + BOX_H / 2, ty + BOX_H / 2
        if sx == tx:  # same column (a copy of a snapshot): a curve on the right
            x = sx + BOX_W
            d = f"M {x} {sy} C {x + 40} {sy}, {x + 40} {ty}, {x} {ty}"
        elif sx < tx:
            d = f"M {sx + BOX_W} {sy} L {tx} {ty}"
        else:
            d = f"M {sx} {sy} L {tx + BOX_W} {ty}"
        parts.append(f'<path class="edge" d="{d}" marker-end="url(#arrow)" data-source="{escape(edge.source)}" '
                     f'data-target="{escape(edge.target)}"><title>{escape(edge.source)} {escape(edge.label)} '
                     f'{escape(edge.target)}</title></path>')
    for node in graph.nodes.values():
        if node.id not in placed:
            continue
        x, y = placed[node.id]
        title = f"{node.kind} {node.id}" + (f" ({node.state})" if node.state else "") + (
            f", account {node.account}" if node.account else "")
        body = (f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4"/>'
                f'<text x="{x + 8}" y="{y + 22}">{escape(_label(node.label))}</text>'
                f'<title>{escape(title)}</title>')
        link = href(node)
        attrs = f'class="{_node_class(node, graph.focus)}" data-id="{escape(node.id)}" data-kind="{node.kind}"'
        if node.state:
            attrs += f' data-state="{escape(node.state)}"'
        if link:
            parts.append(f'<a href="{escape(link)}" {attrs}>{body}</a>')
        else:
            parts.append(f'<g {attrs}>{body}</g>')
    parts.append("</svg>")
    return "".join(parts)
