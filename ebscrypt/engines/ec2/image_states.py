"""Image lifecycle (R-LIFE-1, R-KEY-6): a ``pending`` image becomes ``available`` or
``failed`` when its snapshots reach a final state.

Three paths lead here: ``snapshots`` calling :func:`after_snapshot` (a snapshot job
finished), the ``image_finalize`` job (RegisterImage over snapshots still pending, or a
race), and DescribeImages repairing images whose call was missed (e.g. after a crash).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, select, update

from ebscrypt.context import RequestContext, Runtime
from ebscrypt.domain import image_states as states
from ebscrypt.engines.ec2.image_records import Image
from ebscrypt.engines.jobs import JobContext, job_kind
from ebscrypt.storage.tables.ec2 import ec2_snapshots
from ebscrypt.storage.tables.ec2_images import ec2_image_snapshots as image_snaps_t
from ebscrypt.storage.tables.ec2_images import ec2_images as images_t


def _reason_parts(message: str | None) -> tuple[str, str]:
    """A snapshot's StateMessage → the image's StateReason (code, message).

    ``"Client.InvalidKMSKey.InvalidState: The KMS key … is disabled."`` keeps its code; a
    bare KMS refusal (the copier may not use the source key, R-SHARE-4) is reported as
    EC2 reports key problems, ``Client.InvalidKMSKey.InvalidState``, with the cause.
    """
    message = message or "Client.Error: a snapshot of the image could not be created"
    head, sep, _rest = message.partition(": ")
    if sep and re.match(r"^[A-Za-z]+(\.[A-Za-z]+)+$", head):
        return head, message
    if re.search(r"kms|KMS key|[Kk]ey '", message):
        return "Client.InvalidKMSKey.InvalidState", f"Client.InvalidKMSKey.InvalidState: {message}"
    return "Client.Error", f"Client.Error: {message}"


def refresh_image(conn: Connection, image_id: str) -> str | None:
    """Move a pending image to available/failed from its snapshots' states. [conn]

    Returns the new state (or None if the image is gone).
    """
    row = conn.execute(select(images_t).where(images_t.c.image_id == image_id)).mappings().first()
    if row is None:
        return None
    image = Image.from_row(row)
    if image.state != states.IMAGE_PENDING:
        return image.state
    snap_ids = image.snapshot_ids()
    found = {
        r.id: (r.state, r.state_message)
        for r in conn.execute(
            select(ec2_snapshots.c.id, ec2_snapshots.c.state, ec2_snapshots.c.state_message).where(ec2_snapshots.c.id.in_(snap_ids))
        )
    } if snap_ids else {}
    snapshot_states = [found.get(s, ("error", f"Client.Error: snapshot {s} no longer exists"))[0] for s in snap_ids]
    new_state = states.image_state_after(snapshot_states)
    if new_state == states.IMAGE_PENDING:
        return new_state
    values: dict[str, Any] = {"state": new_state}
    if new_state == states.IMAGE_FAILED:
        failed = next(s for s in snap_ids if found.get(s, ("error", None))[0] == "error")
        code, message = _reason_parts(found.get(failed, ("error", None))[1])
        values.update(state_reason_code=code, state_reason_message=f"{message} (snapshot {failed})")
    conn.execute(update(images_t).where(images_t.c.image_id == image_id, images_t.c.state == states.IMAGE_PENDING).values(**values))
    return new_state


def after_snapshot(runtime: Runtime, snapshot_id: str, state: str) -> None:
    """A snapshot reached completed/error (``snapshots`` calls this): the pending images
    using it move on."""
    query = select(image_snaps_t.c.image_id).where(image_snaps_t.c.snapshot_id == snapshot_id)
    with runtime.db.read() as conn:  # the usual case (a CreateSnapshot): no image, no write lock
        if conn.execute(query.limit(1)).first() is None:
            return
    with runtime.db.begin() as conn:
        image_ids = [r.image_id for r in conn.execute(query)]
        for image_id in image_ids:
            refresh_image(conn, image_id)


def _fail_image(runtime: Runtime, payload: dict[str, Any], reason: str) -> None:
    with runtime.db.begin() as conn:
        conn.execute(
            update(images_t).where(images_t.c.image_id == payload["image_id"], images_t.c.state == states.IMAGE_PENDING)
            .values(state=states.IMAGE_FAILED, state_reason_code="Server.InternalError", state_reason_message=reason)
        )


@job_kind("image_finalize", resumable=True, on_fail=_fail_image)
def _finalize_job(job: JobContext) -> None:
    """Finish an image whose snapshots may already be final (RegisterImage, races)."""
    with job.runtime.db.begin() as conn:
        refresh_image(conn, job.payload["image_id"])


# ============================================================================ DescribeImages


def states_of(ctx: RequestContext, image_ids: list[str]) -> list[str]:
    """The current states of these images (for ``waits.settle``)."""
    with ctx.runtime.db.read() as conn:
        return [r.state for r in conn.execute(select(images_t.c.state).where(images_t.c.image_id.in_(image_ids)))]


def repair(ctx: RequestContext, image_ids: list[str]) -> None:
    """Finish pending images whose snapshots are already final (e.g. after a crash)."""
    with ctx.runtime.db.begin() as conn:
        for image_id in image_ids:
            refresh_image(conn, image_id)
