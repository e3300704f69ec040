"""The lineage graph around one resource, and what a KMS key still protects.

Nodes: images, snapshots, volumes, instances, data keys, KMS keys. Edges point from a
resource to what it is made of or protected by: image -> snapshot ("contains"), volume
-> snapshot ("created from"), snapshot -> volume ("snapshot of"), snapshot -> snapshot
("copied from"), instance -> volume ("attached"), resource -> data key ("data key"),
data key -> KMS key ("wrapped by"). Sources may be another account's (shared with the
viewer); what was made from a resource is followed only within the viewer's account. The graph is the neighbourhood of the focus only:
a breadth-first walk of at most ``MAX_NODES`` nodes, so it stays small on an account
with 10,000 resources (``truncated`` says when the walk stopped early).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from sqlalchemy import Connection

from ebscrypt.engines.insight import resources as res
from ebscrypt.engines.insight.explain import COPY_VOLUME_ID
from ebscrypt.engines.insight.records import Graph, KeyInfo, Node
from ebscrypt.errors import UnknownResource

MAX_NODES = 60
FANOUT = 12  # dependants followed per node (volumes from one snapshot, copies …)


def _resource_node(kind: str, row: Any, viewer: str | None) -> Node:
    rid = row["image_id"] if kind == "image" else row["instance_id"] if kind == "instance" else row["id"]
    label = f"{rid} {row['name']}" if kind == "image" else rid
    encrypted = bool(row["encrypted"]) if kind in ("volume", "snapshot") else None
    return Node(rid, kind, label, row["account"], row["state"], encrypted,
                foreign=viewer is not None and row["account"] != viewer)


def _key_node(key: KeyInfo, viewer: str | None) -> Node:
    return Node(key.arn, "kmskey", key.label, key.account, key.state, None,
                foreign=viewer is not None and key.account != viewer)


def neighbourhood(conn: Connection, focus: str, viewer: str | None, *, max_nodes: int = MAX_NODES) -> Graph:
    """The graph around ``focus`` (a resource id or a KMS key ARN/id), as ``viewer`` sees it.

    The focus must be the viewer's (or viewer None); neighbours of other accounts (the
    source of a copy shared with the viewer, another account's key) are shown, marked
    ``foreign``, and never expanded further than one step."""
    graph = Graph(focus)
    key = res.key_by_id(conn, focus) if res.kind_of(focus) is None else None
    if key is not None:
        if viewer is not None and key.account != viewer:
            raise UnknownResource(f"The key '{focus}' does not exist.")
        graph.focus = key.arn
        graph.add(_key_node(key, viewer))
        queue: deque[tuple[str, str]] = deque([("kmskey", key.arn)])
    else:
        found = res.resource(conn, focus)
        if found is None or (viewer is not None and res.owner_of(found[1]) != viewer):
            raise UnknownResource(f"The resource '{focus}' does not exist.")
        graph.add(_resource_node(found[0], found[1], viewer))
        queue = deque([(found[0], focus)])
    expanded: set[str] = set()
    while queue:
        kind, node_id = queue.popleft()
        if node_id in expanded:
            continue
        expanded.add(node_id)
        node = graph.nodes.get(node_id)
        if node is not None and node.foreign and node_id != graph.focus:
            # Another account's (the source of a copy shared with the viewer): its key is
            # shown — a re-encrypted copy's lineage names both keys — but not its other links.
            _foreign_keys(conn, graph, kind, node_id, viewer)
            continue
        for nkind, nid in _expand(conn, graph, kind, node_id, viewer):
            if len(graph.nodes) >= max_nodes:
                graph.truncated = True
                return graph
            if nid not in expanded:
                queue.append((nkind, nid))
    return graph


def _foreign_keys(conn: Connection, g: Graph, kind: str, node_id: str, viewer: str | None) -> None:
    row = res.snapshot(conn, node_id) if kind == "snapshot" else res.volume(conn, node_id) if kind == "volume" else None
    if row is not None:
        _add_keys(conn, g, row, viewer)


def _add_keys(conn: Connection, g: Graph, row: Any, viewer: str | None) -> None:
    """resource -> its data key -> the KMS key wrapping it."""
    if not row["data_key_id"]:
        return
    dk_id = f"dk:{row['data_key_id']}"
    g.add(Node(dk_id, "datakey", f"data key {row['data_key_id'][:8]}", row["account"],
               foreign=viewer is not None and row["account"] != viewer))
    g.link(row["id"], dk_id, "data key")
    key = res.key_info(conn, row["kms_key_arn"])
    if key is not None:
        g.add(_key_node(key, viewer))
        g.link(dk_id, key.arn, "wrapped by")


def _expand(conn: Connection, g: Graph, kind: str, node_id: str, viewer: str | None) -> list[tuple[str, str]]:
    """Add the neighbours of one node; return those to explore next."""
    out: list[tuple[str, str]] = []
    row: res.Row | None  # the rows of each kind below (a loop variable, then a lookup)
    inst: res.Row | None

    def add(nkind: str, row: Any) -> str:
        n = _resource_node(nkind, row, viewer)
        g.add(n)
        out.append((nkind, n.id))
        return n.id

    def add_keys(row: Any) -> None:
        _add_keys(conn, g, row, viewer)

    def mine(row: Any) -> bool:
        # What was made *from* a resource is followed only into the viewer's account:
        # another account's copies of a shared snapshot are theirs to see. (Sources may
        # be another account's: they were shared with the viewer. A key's page lists
        # every account's dependants: what breaks is the key owner's business.)
        return viewer is None or row["account"] == viewer

    if kind == "kmskey":
        vols, snaps = res.dependants(conn, node_id, FANOUT)
        for row in vols:
            add("volume", row)
            add_keys(row)
        for row in snaps:
            add("snapshot", row)
            add_keys(row)
        return out
    if kind == "image":
        row = res.image(conn, node_id)
        if row is None:
            return out
        for snap_id in res.image_snapshot_ids(row):
            snap = res.snapshot(conn, snap_id)
            if snap is not None:
                g.link(node_id, add("snapshot", snap), "contains")
        for inst in res.instances_of_image(conn, node_id, FANOUT):
            if mine(inst):
                g.link(add("instance", inst), node_id, "launched from")
        if row["source_image_id"]:
            src = res.image(conn, row["source_image_id"])
            if src is not None:
                g.link(node_id, add("image", src), "copied from")
        return out
    if kind == "instance":
        for vol in res.volumes_of_instance(conn, node_id):
            g.link(node_id, add("volume", vol), "attached")
        inst = res.instance(conn, node_id)
        if inst is not None:
            img = res.image(conn, inst["image_id"])
            if img is not None:
                g.link(node_id, add("image", img), "launched from")
        return out
    if kind == "volume":
        row = res.volume(conn, node_id)
        if row is None:
            return out
        add_keys(row)
        if row["snapshot_id"]:
            src = res.snapshot(conn, row["snapshot_id"])
            if src is not None:
                g.link(node_id, add("snapshot", src), "created from")
        for snap in res.snapshots_of_volume(conn, node_id, FANOUT):
            if mine(snap):
                g.link(add("snapshot", snap), node_id, "snapshot of")
        inst_id = res.instance_of_volume(conn, node_id)
        inst = res.instance(conn, inst_id) if inst_id else None
        if inst is not None:
            g.link(add("instance", inst), node_id, "attached")
        return out
    if kind == "snapshot":
        row = res.snapshot(conn, node_id)
        if row is None:
            return out
        add_keys(row)
        if row["origin"] == "copy" and row["source_snapshot_id"]:
            src = res.snapshot(conn, row["source_snapshot_id"])
            if src is not None:
                g.link(node_id, add("snapshot", src), "copied from")
        elif row["origin"] == "direct" and row["parent_id"]:
            src = res.snapshot(conn, row["parent_id"])
            if src is not None:
                g.link(node_id, add("snapshot", src), "uploaded on top of")
        elif row["volume_id"] and row["volume_id"] != COPY_VOLUME_ID:
            src = res.volume(conn, row["volume_id"])
            if src is not None:
                g.link(node_id, add("volume", src), "snapshot of")
        for image_id in res.images_using(conn, [node_id]).get(node_id, []):
            img = res.image(conn, image_id)
            if img is not None and mine(img):
                g.link(add("image", img), node_id, "contains")
        for copy in res.copies_of(conn, node_id, FANOUT):
            if mine(copy):
                g.link(add("snapshot", copy), node_id, "copied from")
        for vol in res.volumes_from_snapshot(conn, node_id, FANOUT):
            if mine(vol):
                g.link(add("volume", vol), node_id, "created from")
        return out
    return out


def key_dependants(conn: Connection, key_arn: str, *, limit: int = 500) -> dict[str, list[dict[str, str]]]:
    """What ``key_arn`` still protects: volumes, snapshots, and the images and instances
    built on them (each with its owner account), at most ``limit`` of each."""
    vols, snaps = res.dependants(conn, key_arn, limit)
    snap_ids = [s["id"] for s in snaps]
    image_ids = sorted({i for ids in res.images_using(conn, snap_ids).values() for i in ids})
    images = [r for r in (res.image(conn, i) for i in image_ids) if r is not None]
    instance_ids = sorted({i for i in (res.instance_of_volume(conn, v["id"]) for v in vols) if i})
    instances = [r for r in (res.instance(conn, i) for i in instance_ids) if r is not None]
    return {
        "volumes": [{"id": v["id"], "account": v["account"], "region": v["region"], "state": v["state"]}
                    for v in vols],
        "snapshots": [{"id": s["id"], "account": s["account"], "region": s["region"], "state": s["state"]}
                      for s in snaps],
        "images": [{"id": r["image_id"], "account": r["account"], "region": r["region"], "state": r["state"],
                    "name": r["name"]} for r in images],
        "instances": [{"id": r["instance_id"], "account": r["account"], "region": r["region"],
                       "state": r["state"]} for r in instances],
    }
