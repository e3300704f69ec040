"""The read-only web console served by ``ebscrypt serve`` at ``/_console/`` (issue 16).

Server-rendered HTML (Jinja2, autoescaped), no JavaScript: lists of keys, volumes,
snapshots, images and instances per account and region; a lineage graph as inline SVG
around one resource (console/svg.py); a key's page lists what depends on it; the KMS
audit trail filtered by key or resource. Answers come from the insight engine
(engines/insight) in read transactions; the console writes nothing but its cookie.
"""
