"""Insight: read-only answers about encryption across accounts (issue 16).

Nothing here writes. Every function takes a SQLAlchemy connection in a read
transaction (``runtime.db.read()``, or :func:`ebscrypt.storage.readonly.open_read_only`
for the CLI, which reads the metadata database directly) and returns typed records:

  records    Node/Edge/Graph, Explanation/ChainLink, Finding, KeyInfo: what callers see
  resources  small typed reads over the EC2 and KMS tables (one place for their SQL)
  explain    explain(conn, resource_id, account=None) -> Explanation: key, rule of SPEC §2
             that chose it (from ec2_provenance), source chain back to the first upload
             or empty volume, R-KEY-2 data-key sharing with the parent
  lineage    neighbourhood(conn, focus_id, account) -> Graph: images -> snapshots ->
             volumes -> data keys -> KMS keys around one resource (bounded), and
             dependants(conn, key_arn) -> what a key still protects
  posture    report(conn, account=None) -> list[Finding] with severities
  inventory  paged lists of keys, volumes, snapshots, images, instances per account/region
  trail      the KMS audit trail (CloudTrail records) filtered by key, resource or account
"""
