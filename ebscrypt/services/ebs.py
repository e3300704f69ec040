"""EBS direct APIs (rest-json ``ebs``): write snapshots block by block, read them back.

StartSnapshot, PutSnapshotBlock, CompleteSnapshot, GetSnapshotBlock, ListSnapshotBlocks,
ListChangedBlocks (SPEC R-DATA-1, R-LIFE-2, §2). These handlers parse the request, call
:mod:`ebscrypt.engines.ebs.snapshots` with typed arguments and build the answer.
"""

from __future__ import annotations

from typing import Any

from ebscrypt.context import RequestContext
from ebscrypt.engines.blocks.crypto import BLOCK_SIZE
from ebscrypt.engines.ebs import snapshots as E
from ebscrypt.services.registry import operation


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@operation("ebs", "StartSnapshot")
def start_snapshot(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    req = E.StartRequest(
        volume_size=int(params["VolumeSize"]),
        parent_snapshot_id=params.get("ParentSnapshotId"),
        encrypted=params.get("Encrypted"),
        kms_key_arn=params.get("KmsKeyArn"),
        description=params.get("Description"),
        client_token=params.get("ClientToken"),
        tags=tuple(params.get("Tags") or []),
        timeout_minutes=int(params.get("Timeout") or E.DEFAULT_TIMEOUT_MINUTES),
    )
    snap, tag_list = E.start_snapshot(ctx, req)
    out: dict[str, Any] = {
        "SnapshotId": snap.id,
        "OwnerId": snap.account,
        "Status": snap.state if snap.state in ("pending", "completed", "error") else "pending",
        "StartTime": snap.start_time,
        "VolumeSize": int(snap.volume_size),
        "BlockSize": BLOCK_SIZE,
        "SseType": "sse-kms" if snap.encrypted else "none",
    }
    if snap.description:
        out["Description"] = snap.description
    if tag_list:
        out["Tags"] = tag_list
    if snap.parent_id:
        out["ParentSnapshotId"] = snap.parent_id
    if snap.encrypted and snap.kms_key_arn:
        out["KmsKeyArn"] = snap.kms_key_arn
    return out


@operation("ebs", "PutSnapshotBlock")
def put_snapshot_block(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    actual = E.put_block(ctx, params["SnapshotId"], int(params["BlockIndex"]), params.get("BlockData") or b"",
                         data_length=int(params["DataLength"]), checksum=params["Checksum"],
                         checksum_algorithm=params.get("ChecksumAlgorithm"), progress=_int(params.get("Progress")))
    return {"Checksum": actual, "ChecksumAlgorithm": "SHA256"}


@operation("ebs", "CompleteSnapshot")
def complete_snapshot(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    E.complete_snapshot(ctx, params["SnapshotId"], changed_blocks_count=int(params["ChangedBlocksCount"]),
                        checksum=params.get("Checksum"),
                        checksum_algorithm=params.get("ChecksumAlgorithm", "SHA256"),
                        aggregation_method=params.get("ChecksumAggregationMethod", "LINEAR"))
    return {"Status": "completed"}


@operation("ebs", "GetSnapshotBlock")
def get_snapshot_block(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    data, checksum = E.get_block(ctx, params["SnapshotId"], int(params["BlockIndex"]), params["BlockToken"])
    return {"BlockData": data, "DataLength": len(data), "Checksum": checksum, "ChecksumAlgorithm": "SHA256"}


def _listing(key: str, page: E.Page, items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {key: items, "ExpiryTime": page.expiry, "VolumeSize": page.volume_size,
                           "BlockSize": BLOCK_SIZE}
    if page.next_token:
        out["NextToken"] = page.next_token
    return out


@operation("ebs", "ListSnapshotBlocks")
def list_snapshot_blocks(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    page = E.list_blocks(ctx, params["SnapshotId"], max_results=_int(params.get("MaxResults")),
                         start=_int(params.get("StartingBlockIndex")), next_token=params.get("NextToken"))
    return _listing("Blocks", page, [{"BlockIndex": index, "BlockToken": token} for index, token in page.items])


@operation("ebs", "ListChangedBlocks")
def list_changed_blocks(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    page = E.list_changed_blocks(ctx, params.get("FirstSnapshotId"), params["SecondSnapshotId"],
                                 max_results=_int(params.get("MaxResults")),
                                 start=_int(params.get("StartingBlockIndex")), next_token=params.get("NextToken"))
    items = []
    for c in page.items:
        item: dict[str, Any] = {"BlockIndex": c.index}
        if c.first_token is not None:
            item["FirstBlockToken"] = c.first_token
        if c.second_token is not None:
            item["SecondBlockToken"] = c.second_token
        items.append(item)
    return _listing("ChangedBlocks", page, items)
