"""The members ebscrypt cannot work without, whatever botocore model is installed.

botocore's ``required`` traits are the SDK's contract, not ours, and they change between
releases: botocore 1.44 dropped ``required`` from KMS CreateGrant's ``GranteePrincipal``
and ListRetirableGrants' ``RetiringPrincipal`` (AWS added ``GranteeServicePrincipal`` /
``RetiringServicePrincipal`` as alternatives), from Decrypt's and ReEncrypt's
``CiphertextBlob`` (optional only for a DryRun with ``IGNORE_CIPHERTEXT``) and from EC2
CreateVolume's ``AvailabilityZone`` (``AvailabilityZoneId`` may name the zone instead).
A request without them then reached handlers that read them, and failed with a 500.

So the codecs refuse a request that lacks any member named here, in the protocol's own
words (EC2 ``MissingParameter`` "The request must contain the parameter X"; KMS/EBS
``ValidationException`` "Value null at 'x' failed to satisfy constraint: Member must not
be null"), before a handler runs — as well as any member the installed model marks
required (AWS's current contract). Where this table names a group of alternatives, the
group replaces the model's flag on any of its members.

Keyed by (service, shape name): shape names are the SDKs' public type names
(``CreateGrantRequest``, boto3's and the Java/Go SDKs' request classes), which do not
change between releases the way traits do. tests/unit/test_wire_required.py checks every
entry against the installed model, so a renamed shape or member fails loudly. The table
holds what AWS documented as required when the handlers were written (botocore 1.40),
plus the alternatives ebscrypt implements; a new handler adds its entries here.
"""

from __future__ import annotations

import functools
from typing import Any

# A group: at least one of its members must be present (a 1-tuple: that member).
Group = tuple[str, ...]

_NEEDED: dict[str, dict[str, tuple[Group | str, ...]]] = {
    "ec2": {
        "AttachVolumeRequest": ("Device", "InstanceId", "VolumeId"),
        "AuthorizeSecurityGroupEgressRequest": ("GroupId",),
        "CopyImageRequest": ("Name", "SourceImageId", "SourceRegion"),
        "CopySnapshotRequest": ("SourceRegion", "SourceSnapshotId"),
        "CreateImageRequest": ("InstanceId", "Name"),
        "CreateKeyPairRequest": ("KeyName",),
        "CreateLaunchTemplateRequest": ("LaunchTemplateData", "LaunchTemplateName"),
        "CreateLaunchTemplateVersionRequest": ("LaunchTemplateData",),
        "CreateSecurityGroupRequest": ("Description", "GroupName"),
        "CreateSnapshotRequest": ("VolumeId",),
        "CreateSnapshotsRequest": ("InstanceSpecification",),
        "CreateTagsRequest": ("Resources", "Tags"),
        # services/ec2/volumes.py turns AvailabilityZoneId into the zone's name.
        "CreateVolumeRequest": (("AvailabilityZone", "AvailabilityZoneId"),),
        "CreditSpecificationRequest": ("CpuCredits",),
        "DeleteLaunchTemplateVersionsRequest": ("Versions",),
        "DeleteSnapshotRequest": ("SnapshotId",),
        "DeleteTagsRequest": ("Resources",),
        "DeleteVolumeRequest": ("VolumeId",),
        "DeregisterImageRequest": ("ImageId",),
        "DescribeImageAttributeRequest": ("Attribute", "ImageId"),
        "DescribeInstanceAttributeRequest": ("Attribute", "InstanceId"),
        "DescribeSnapshotAttributeRequest": ("Attribute", "SnapshotId"),
        "DescribeVolumeAttributeRequest": ("Attribute", "VolumeId"),
        "DetachVolumeRequest": ("VolumeId",),
        "ElasticGpuSpecification": ("Type",),
        "ElasticInferenceAccelerator": ("Type",),
        "ImportKeyPairRequest": ("KeyName", "PublicKeyMaterial"),
        "InstanceRequirementsRequest": ("MemoryMiB", "VCpuCount"),
        "InstanceSpecification": ("InstanceId",),
        "LaunchTemplateElasticInferenceAccelerator": ("Type",),
        "MemoryMiBRequest": ("Min",),
        "ModifyEbsDefaultKmsKeyIdRequest": ("KmsKeyId",),
        "ModifyImageAttributeRequest": ("ImageId",),
        "ModifyInstanceAttributeRequest": ("InstanceId",),
        "ModifySnapshotAttributeRequest": ("SnapshotId",),
        "ModifyVolumeAttributeRequest": ("VolumeId",),
        "ModifyVolumeRequest": ("VolumeId",),
        "RegisterImageRequest": ("Name",),
        "ResetImageAttributeRequest": ("Attribute", "ImageId"),
        "ResetSnapshotAttributeRequest": ("Attribute", "SnapshotId"),
        "RevokeSecurityGroupEgressRequest": ("GroupId",),
        "RunInstancesMonitoringEnabled": ("Enabled",),
        "RunInstancesRequest": ("MaxCount", "MinCount"),
        "StartInstancesRequest": ("InstanceIds",),
        "StopInstancesRequest": ("InstanceIds",),
        "TerminateInstancesRequest": ("InstanceIds",),
        "VCpuCountRangeRequest": ("Min",),
    },
    "kms": {
        "CancelKeyDeletionRequest": ("KeyId",),
        "CreateAliasRequest": ("AliasName", "TargetKeyId"),
        # ebscrypt has no service principals: GranteeServicePrincipal is not an alternative.
        "CreateGrantRequest": ("GranteePrincipal", "KeyId", "Operations"),
        # DryRunModifiers (IGNORE_CIPHERTEXT) is not implemented: the ciphertext is needed.
        "DecryptRequest": ("CiphertextBlob",),
        "DeleteAliasRequest": ("AliasName",),
        "DescribeKeyRequest": ("KeyId",),
        "DisableKeyRequest": ("KeyId",),
        "DisableKeyRotationRequest": ("KeyId",),
        "EnableKeyRequest": ("KeyId",),
        "EnableKeyRotationRequest": ("KeyId",),
        "EncryptRequest": ("KeyId", "Plaintext"),
        "GenerateDataKeyPairRequest": ("KeyId", "KeyPairSpec"),
        "GenerateDataKeyPairWithoutPlaintextRequest": ("KeyId", "KeyPairSpec"),
        "GenerateDataKeyRequest": ("KeyId",),
        "GenerateDataKeyWithoutPlaintextRequest": ("KeyId",),
        "GenerateMacRequest": ("KeyId", "MacAlgorithm", "Message"),
        "GetKeyPolicyRequest": ("KeyId",),
        "GetKeyRotationStatusRequest": ("KeyId",),
        "GetPublicKeyRequest": ("KeyId",),
        "ListGrantsRequest": ("KeyId",),
        "ListKeyPoliciesRequest": ("KeyId",),
        "ListKeyRotationsRequest": ("KeyId",),
        "ListResourceTagsRequest": ("KeyId",),
        # RetiringServicePrincipal is not implemented either (see CreateGrantRequest).
        "ListRetirableGrantsRequest": ("RetiringPrincipal",),
        "PutKeyPolicyRequest": ("KeyId", "Policy"),
        "ReEncryptRequest": ("CiphertextBlob", "DestinationKeyId"),
        "RevokeGrantRequest": ("GrantId", "KeyId"),
        "RotateKeyOnDemandRequest": ("KeyId",),
        "ScheduleKeyDeletionRequest": ("KeyId",),
        "SignRequest": ("KeyId", "Message", "SigningAlgorithm"),
        "Tag": ("TagKey", "TagValue"),
        "TagResourceRequest": ("KeyId", "Tags"),
        "UntagResourceRequest": ("KeyId", "TagKeys"),
        "UpdateAliasRequest": ("AliasName", "TargetKeyId"),
        "UpdateKeyDescriptionRequest": ("Description", "KeyId"),
        "VerifyMacRequest": ("KeyId", "Mac", "MacAlgorithm", "Message"),
        "VerifyRequest": ("KeyId", "Message", "Signature", "SigningAlgorithm"),
    },
    "ebs": {
        "CompleteSnapshotRequest": ("ChangedBlocksCount", "SnapshotId"),
        "GetSnapshotBlockRequest": ("BlockIndex", "BlockToken", "SnapshotId"),
        "ListChangedBlocksRequest": ("SecondSnapshotId",),
        "ListSnapshotBlocksRequest": ("SnapshotId",),
        "PutSnapshotBlockRequest": (
            "BlockData", "BlockIndex", "Checksum", "ChecksumAlgorithm", "DataLength", "SnapshotId",
        ),
        "StartSnapshotRequest": ("VolumeSize",),
    },
}


def table(service: str) -> dict[str, tuple[Group, ...]]:
    """ebscrypt's own entries for ``service``: {shape name: groups} (for tests and docs)."""
    return {name: tuple(_group(g) for g in groups) for name, groups in _NEEDED.get(service, {}).items()}


def _group(entry: Group | str) -> Group:
    return (entry,) if isinstance(entry, str) else entry


@functools.lru_cache(maxsize=4096)
def _groups(service: str, shape_name: str, model_required: tuple[str, ...]) -> tuple[Group, ...]:
    ours = [_group(g) for g in _NEEDED.get(service, {}).get(shape_name, ())]
    covered = {name for g in ours for name in g}
    return tuple(ours + [(name,) for name in model_required if name not in covered])


def required_groups(service: str, shape: Any) -> tuple[Group, ...]:
    """The member groups of structure ``shape`` of which one member each must be present:
    ebscrypt's table, plus the installed model's required members it does not cover."""
    return _groups(service, shape.name, tuple(shape.required_members))


def is_required(service: str, shape: Any, member: str) -> bool:
    """Whether ``member`` alone (no alternative) must be present in ``shape``."""
    return (member,) in required_groups(service, shape)


def missing(service: str, shape: Any, present: Any) -> list[str]:
    """For each unmet group, the member the error names (its first); [] when all are met."""
    return [g[0] for g in required_groups(service, shape) if not any(name in present for name in g)]
