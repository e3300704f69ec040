"""KMS (JSON 1.1) handlers, one module per family: :mod:`.keys` (lifecycle, rotation,
tags), :mod:`.access` (policies, aliases, grants), :mod:`.crypto` (encryption, data keys,
signatures, MACs).

A handler turns the parsed request into the operation's typed arguments
(:mod:`ebscrypt.engines.kms.api`) and calls the key engine (``ctx.runtime.kms``) inside
its audit event (:func:`.call.audited`): every call, allowed or refused, appends one
CloudTrail-format record. The engine holds every rule and every check, in the order AWS
reports them.
"""
