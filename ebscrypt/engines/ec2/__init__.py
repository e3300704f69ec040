"""EC2 resource engine: volumes, snapshots, images, instances, launch templates, key
pairs, networking, tags and account settings. Import the module you need; this package
re-exports nothing (siblings import each other directly).

By concept:
  records, ids, tags, filters        resource records, id forms, the generic tag store, Filters
  account, encryption                R-ACC settings; the outcome rule applied (domain/outcome.py),
                                     key checks, data keys (R-KEY-*)
  volumes, snapshots, copy_source    EBS volumes and snapshots, their jobs and copies
  provenance, reconcile, waits       why a resource has its key (``explain``), start-up repair,
                                     bounded Describe waits (R-LIFE-1)
  images, image_*                    AMIs (records, copy/create, permissions, states)
  instances, instance_attributes     RunInstances and the instance life cycle
  templates                          launch templates
  keypairs, network, security_groups VPCs/subnets, security groups, key pairs
  tag_operations                     CreateTags/DeleteTags/DescribeTags

IMPORTANT (SQLite): every KMS engine call may write (audit log, grants, the aws/ebs key),
and SQLite transactions here take the write lock at BEGIN. So never call a function that
talks to KMS while you hold ``db.begin()``. Functions are marked [KMS, no conn] (they open
their own short transactions) or [conn] (pure SQL in the caller's transaction).
"""
