"""The typed answers of the insight engine (plain data; ``as_dict`` for JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

UNKNOWN_PROVENANCE = "unknown (created before provenance was recorded)"

# Severities, lowest first; --fail-on compares positions in this tuple.
SEVERITIES = ("info", "low", "medium", "high", "critical")


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class KeyInfo:
    """A KMS key as insight shows it. ``state`` is ``Deleted`` when the key row is gone
    (crypto-shredded, R-KEY-8) and ``Unknown`` when the ARN never named a key here."""

    arn: str
    key_id: str
    account: str
    region: str
    state: str
    manager: str | None = None
    aliases: tuple[str, ...] = ()
    deletion_date: str | None = None

    @property
    def label(self) -> str:
        return self.aliases[0] if self.aliases else self.key_id


@dataclass(frozen=True)
class Decision:
    """The outcome decision recorded with a resource (table ec2_provenance)."""

    rule: str
    rule_text: str
    operation: str
    requested_encrypted: bool | None
    requested_kms_key_id: str | None
    ebd: bool | None
    default_key: str | None
    problem: str | None
    recorded_at: str


@dataclass(frozen=True)
class ChainLink:
    """One resource on the way back to the first upload or empty volume."""

    id: str
    type: str  # volume | snapshot | upload | empty | missing
    account: str | None
    region: str | None
    encrypted: bool | None
    kms_key_arn: str | None
    data_key_id: str | None
    how: str  # how this link was made from the next one ("copied from snap-…", …)


@dataclass
class Explanation:
    id: str
    type: str  # volume | snapshot | image | instance
    account: str
    region: str
    state: str
    encrypted: bool | None = None
    key: KeyInfo | None = None
    decision: Decision | None = None
    decision_note: str | None = None  # UNKNOWN_PROVENANCE when no record exists
    data_key_id: str | None = None
    parent_id: str | None = None
    data_key_shared_with_parent: bool | None = None  # R-KEY-2
    chain: list[ChainLink] = field(default_factory=list)
    parts: list["Explanation"] = field(default_factory=list)  # an image's snapshots, an instance's volumes
    image_id: str | None = None  # an instance's image

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    account: str
    region: str
    resource: str
    message: str
    details: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["details"] = list(self.details)
        return out


@dataclass(frozen=True)
class Node:
    id: str
    kind: str  # image | snapshot | volume | instance | datakey | kmskey
    label: str
    account: str | None = None
    state: str | None = None  # a KMS key's state colours it
    encrypted: bool | None = None
    foreign: bool = False  # owned by another account than the viewer


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str  # "contains", "copied from", "created from", "data key", "wrapped by" …


@dataclass
class Graph:
    focus: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    truncated: bool = False

    def add(self, node: Node) -> None:
        self.nodes.setdefault(node.id, node)

    def link(self, source: str, target: str, label: str) -> None:
        edge = Edge(source, target, label)
        if edge not in self.edges:
            self.edges.append(edge)
