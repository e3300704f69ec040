"""EC2 resource records (owner: ec2core): volumes, snapshots, account settings, tags, data keys.

API summary for the other members (ec2images, blocks). Everything is importable from
``ebscrypt.engines.ec2`` (this package); submodules: ``records``, ``account``,
``encryption``, ``volumes``, ``snapshots``, ``tags``, ``jobs``, ``ids``.

IMPORTANT (SQLite): every KMS engine call may write (audit log, grants, the aws/ebs key),
and SQLite transactions here take the write lock at BEGIN. So never call a function that
talks to KMS while you hold ``db.begin()``. Functions are marked [KMS, no conn] (they open
their own short transactions) or [conn] (pure SQL in the caller's transaction).

Encryption (SPEC §2, applies ebscrypt/domain/outcome.py; R-KEY-5/6 key validation)
  resolve_encryption(ctx, source: Snapshot|None, encrypted: bool|None, kms_key_id: str|None,
                     *, cross_region=False) -> EncryptionPlan                      [KMS, no conn]
      EncryptionPlan(encrypted, key_arn, reuse_source_data_key, rule, problem, key_manager)
      Raises ServiceError InvalidParameterDependency (R-OUT-1). A key that is unknown,
      inaccessible, disabled, pending deletion or asymmetric does NOT raise: plan.problem
      holds the message ("Client.InvalidKMSKey.InvalidState: ...") and the resource built
      from that plan must end in ``error`` / ``failed`` (R-KEY-6). ``ctx`` is anything with
      ``.caller`` and ``.runtime`` (RequestContext, or ``job_ctx(runtime, account, region)``).
  data_key_for(ctx, resource: Volume|Snapshot, *, grant=True) -> DataKey|None    [KMS, no conn]
      R-KEY-3: CreateGrant for ec2 (GrantIsForAWSResource) then Decrypt of the wrapped data
      key, as ctx.caller, via ec2.<resource region>. None for unencrypted resources.
  new_data_key(ctx, key_arn, resource_id) -> WrappedDataKey                      [KMS, no conn]

Account settings (R-ACC)
  get_settings(conn, account, region) -> AccountSettings(ebd, default_key)        [conn]
  default_key_arn(ctx) -> str  (resolves alias/aws/ebs via kms.default_ebs_key)  [KMS, no conn]

Volumes
  validate_volume_spec(volume_type, size, iops, throughput, snapshot_size=None) -> VolumeSpec
      AWS's size/IOPS/throughput rules; raises InvalidParameterValue etc.; fills defaults.
  create_volume(ctx, *, availability_zone, size=None, volume_type=None, iops=None,
                throughput=None, snapshot_id=None, encrypted=None, kms_key_id=None,
                multi_attach=False, client_token=None, tags=None, attach=None) -> Volume
                                                                                  [KMS, no conn]
      attach = Attach(instance_id, device, delete_on_termination): attached as soon as
      the volume is created (RunInstances). The volume starts ``creating``; a job makes it
      ``available`` / ``in-use`` (or ``error`` on a key problem).
      Two-step form for callers inside their own transaction:
        prep = prepare_volume(ctx, ...) [KMS, no conn]; insert_volume(ctx, conn, prep) [conn]
        then ctx.runtime.jobs.notify() after commit. (Or insert_volume(..., defer_job=True)
        and, after commit, finish_volume(runtime, {"volume_id", "account", "region",
        "problem": prep.plan.problem}) in your thread when is_cheap(prep).)
  register_instance_lookup(fn(conn, caller, instance_id) -> {"availability_zone",
      "root_device_name"})  (ec2images: lets AttachVolume/CreateSnapshots validate instances)
  release_volumes(runtime, ids)  (after deleting volume rows: frees their blocks)
      Empty volumes created by create_volume (no attach) are stored ``available`` at once
      (their key is proven in prepare_volume: generate + grant + decrypt); the answer still
      shows ``creating``. insert_volume(..., ready=True) does the same for other callers.
  get_volume(conn, caller, volume_id) -> Volume  (owner only; InvalidVolume.NotFound)  [conn]
  volumes_of_instance(conn, instance_id) -> list[(Volume, Attachment)]              [conn]
  attach_volume(ctx, volume_id, instance_id, device, *, instance_az=None,
                delete_on_termination=False) -> Attachment          [KMS, no conn] (R-KEY-3)
  detach_volume(ctx, volume_id, instance_id=None, *, force=False) -> Attachment     [no conn]
  delete_volume(ctx, volume_id) (VolumeInUse while attached)                        [no conn]
  set_attachment_state / delete_attachments_of_instance(conn, instance_id, delete_volumes)

Snapshots
  create_snapshot_from_volume(ctx, conn, volume_id, description=None, tags=None) -> Snapshot
      R-SNAP-1 (same key, same data key, no KMS call) ``pending`` -> job -> ``completed``. [conn]
  prepare_copy(ctx, source_snapshot_id, source_region=None, encrypted=None,
               kms_key_id=None) -> CopyPlan                                      [KMS, no conn]
  insert_copy(ctx, conn, plan, description=None, tags=None) -> Snapshot              [conn]
  copy_snapshot(ctx, source_snapshot_id, ...) -> Snapshot   (both steps + notify)    [no conn]
  create_snapshot_from_volume(..., defer_job=True) + finish_snapshot(runtime, id) after commit:
      completes the O(1) snapshot in your thread (the job stays as a crash backstop).
  create_snapshot_from_volume(..., complete_now=True) + snapshot_stored(runtime, id) after
      commit: shares the blocks in ``conn`` and stores it ``completed``: one commit, no job.
  insert_copy(..., defer_job=True) + finish_copy(runtime, payload) when copy_is_cheap(plan).
  new_snapshot_record(ctx, *, volume_size, encrypted=None, kms_key_id=None,
                      parent_snapshot_id=None, description=None, client_token=None,
                      tags=None) -> Snapshot                                     [KMS, no conn]
      EBS StartSnapshot: ``pending``, origin "direct", data key generated now (or the
      parent's under the same key). Key problems raise ServiceError(code="KMSKeyProblem").
  complete_snapshot(runtime, snapshot_id) / fail_snapshot(runtime, snapshot_id, message)
  get_snapshot(conn, caller, snapshot_id, region=None) -> Snapshot
      visible = owned, or createVolumePermission for the caller / group all.       [conn]
  snapshot_is_owned(snapshot, caller) -> bool
  register_snapshot_in_use_checker(fn(conn, snapshot_id) -> str|None)  (R-SNAP-3: return
      the image id using it; DeleteSnapshot then fails InvalidSnapshot.InUse)
  register_volume_listener(fn(runtime, volume_id, state)) /
  register_snapshot_listener(fn(runtime, snapshot_id, state)): called after a job moves a
      resource to a final state (available/in-use/error, completed/error).

Provenance (issue 16; table ec2_provenance, read by engines/insight for ``explain``)
  provenance.record(conn, ctx, resource_id, plan=..., key_arn=..., source_type=...)   [conn]
      written by insert_volume, create_snapshot_from_volume, insert_copy and
      new_snapshot_record in the resource's own transaction: the rule (R-OUT-n, R-SNAP-1),
      the request's Encrypted/KmsKeyId, EBD and the default key then (EncryptionPlan
      carries them), the direct source and whether its data key was reused (R-KEY-2).
  provenance.forget(conn, resource_id) when the resource's row is deleted.

Tags (generic, any resource id; services.ec2.tags.register_tag_target(prefix, fn) lets
CreateTags/DeleteTags check that an "ami-"/"i-"/... id exists and is the caller's)
  put_tags(conn, account, region, resource_id, tags: list[{"Key","Value"}])       [conn]
  tags_for(conn, account, ids) -> dict[id, list[{"Key","Value"}]]                [conn]
  tag_specs(params_tag_specifications, resource_type) -> list[{"Key","Value"}]
  delete_tags_of(conn, resource_id)                                              [conn]

Images (AMIs; not re-exported here: import ``ebscrypt.engines.ec2.images``, which re-exports
its submodules' operations). Where each lives:
  images             RegisterImage (register_image), DeregisterImage (deregister_image),
                     DescribeImages (describe_images, its filters)
  image_records      Image, check_image_id, get_image, launch_permissions, image_view,
                     image_using_snapshot; check_name / insert_image / ebs_mapping shared
                     by every way of making an image
  image_copy         CreateImage (create_image, R-IMG-2), CopyImage (copy_image, R-IMG-1)
  image_permissions  describe_attribute / modify_attribute / reset_attribute, launch
                     permission forms, R-SHARE-2/3
  image_states       pending -> available/failed (refresh_image, R-LIFE-1, R-KEY-6), the
                     image_finalize job, the snapshot listener and R-SNAP-3 checker
  waits.settle(read_states, transitional)  bounded wait a Describe makes (R-LIFE-1)

Helpers: new_id(prefix) ("vol-"+17 hex), job_ctx(runtime, account, region),
  filters.apply_filters / filters.dry_run_check, paging.page (MaxResults/NextToken),
  records.from_result(cls, result) (fast rows -> records).
"""

from __future__ import annotations

from ebscrypt.engines.ec2.account import AccountSettings, default_key_arn, get_settings
from ebscrypt.engines.ec2.encryption import (
    EncryptionPlan,
    WrappedDataKey,
    data_key_for,
    new_data_key,
    resolve_encryption,
)
from ebscrypt.engines.ec2.ids import job_ctx, new_id
from ebscrypt.engines.ec2.records import Attachment, Snapshot, Volume
from ebscrypt.engines.ec2.snapshots import (
    CopyPlan,
    copy_is_cheap,
    finish_copy,
    finish_snapshot,
    snapshot_stored,
    complete_snapshot,
    copy_snapshot,
    create_snapshot_from_volume,
    fail_snapshot,
    get_snapshot,
    insert_copy,
    new_snapshot_record,
    prepare_copy,
    register_snapshot_in_use_checker,
    register_snapshot_listener,
    snapshot_is_owned,
)
from ebscrypt.engines.ec2.tags import delete_tags_of, put_tags, tag_specs, tags_for
from ebscrypt.engines.ec2.volumes import (
    Attach,
    attach_volume,
    create_volume,
    delete_attachments_of_instance,
    delete_volume,
    detach_volume,
    get_volume,
    finish_volume,
    insert_volume,
    is_cheap,
    lookup_instance,
    modify_volume,
    prepare_volume,
    register_instance_lookup,
    release_volumes,
    register_volume_listener,
    set_attachment_state,
    validate_volume_spec,
    volumes_of_instance,
)

__all__ = [
    "AccountSettings", "default_key_arn", "get_settings",
    "EncryptionPlan", "WrappedDataKey", "data_key_for", "new_data_key", "resolve_encryption",
    "job_ctx", "new_id", "Attachment", "Snapshot", "Volume",
    "CopyPlan", "complete_snapshot", "copy_snapshot", "create_snapshot_from_volume",
    "fail_snapshot", "get_snapshot", "insert_copy", "new_snapshot_record", "prepare_copy",
    "register_snapshot_in_use_checker", "register_snapshot_listener", "snapshot_is_owned", "snapshot_stored",
    "delete_tags_of", "put_tags", "tag_specs", "tags_for",
    "Attach", "attach_volume", "create_volume", "delete_attachments_of_instance", "delete_volume",
    "detach_volume", "get_volume", "insert_volume", "prepare_volume", "register_volume_listener",
    "set_attachment_state", "validate_volume_spec", "volumes_of_instance",
    "copy_is_cheap", "finish_copy", "finish_snapshot", "finish_volume", "is_cheap", "lookup_instance",
    "modify_volume", "register_instance_lookup", "release_volumes",
]
