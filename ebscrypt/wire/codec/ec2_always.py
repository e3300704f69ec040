"""EC2 response lists AWS sends even when empty (``<tagSet/>``), by output shape.

The query codec writes what a handler returns and leaves out a member the handler left
out, which for most members is what AWS does. These lists are the exception: AWS sends
them empty, and clients index them without a default — Ansible's amazon.aws
``ec2_snapshot`` reads ``snapshot["Tags"]`` from CreateSnapshot and failed with
``KeyError: 'Tags'`` on a snapshot made without tags. Kept here, in one table the codec
consults for every structure it writes, rather than as ``[]`` in each handler.

Evidence, per entry:
- AWS CLI reference examples (docs.aws.amazon.com code library): ``create-snapshot`` without
  tags answers ``"Tags": []``; ``create-volume`` answers ``"Tags": []``; ``run-instances``
  answers ``"ProductCodes": []``, ``"BlockDeviceMappings": []``, ``"SecurityGroups"`` and
  ``"NetworkInterfaces"``; ``describe-security-groups`` answers ``"Ipv6Ranges": []``,
  ``"PrefixListIds": []``, ``"UserIdGroupPairs": []``; ``describe-key-pairs`` ``"Tags": []``.
- moto's EC2 response templates (a well-used emulator) always write ``<tagSet>`` in
  CreateSnapshot, CreateSnapshots, CopySnapshot and DescribeSnapshots, and
  ``<attachmentSet>`` in DescribeVolumes.
- Not here, as AWS omits them when empty: ``tagSet`` of images and instances, an image's
  ``productCodes``; and ``attachmentSet`` is not returned by CreateVolume (API reference,
  ``Volume``), so services/ec2/volumes.py leaves it out of that answer only.
"""

from __future__ import annotations

ALWAYS_EMITTED: dict[str, frozenset[str]] = {
    "Snapshot": frozenset({"Tags"}),  # CreateSnapshot, DescribeSnapshots
    "SnapshotInfo": frozenset({"Tags"}),  # CreateSnapshots
    "CopySnapshotResult": frozenset({"Tags"}),
    "Volume": frozenset({"Tags"}),  # CreateVolume, DescribeVolumes
    "Reservation": frozenset({"Groups", "Instances"}),  # RunInstances, DescribeInstances
    "Instance": frozenset({"BlockDeviceMappings", "ProductCodes", "SecurityGroups", "NetworkInterfaces"}),
    "Image": frozenset({"BlockDeviceMappings"}),
    "KeyPairInfo": frozenset({"Tags"}),
    "SecurityGroup": frozenset({"IpPermissions", "IpPermissionsEgress"}),
    "IpPermission": frozenset({"IpRanges", "Ipv6Ranges", "PrefixListIds", "UserIdGroupPairs"}),
}
