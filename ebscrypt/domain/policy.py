"""KMS key policy documents: parsing, validation and evaluation (pure; no I/O).

A key policy is an IAM-style JSON document. :func:`parse_policy` validates it (unknown
elements, bad effects, bad principals or condition operators raise :class:`PolicyError`,
which the service reports as ``MalformedPolicyDocumentException``); :func:`evaluate`
decides one request against it: an explicit ``Deny`` wins over any ``Allow``; no
matching statement is an implicit deny.

ebscrypt has no IAM. A policy statement naming an account (``{"AWS":
"arn:aws:iam::ACCT:root"}`` or ``"ACCT"``) therefore applies to every principal of that
account, as if that account's IAM policies granted them everything the key policy lets
the account delegate (in AWS, the key policy delegates to IAM; here IAM allows all).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Sequence

__all__ = [
    "Decision",
    "Policy",
    "PolicyError",
    "Request",
    "Statement",
    "aws_managed_policy",
    "default_key_policy",
    "evaluate",
    "parse_policy",
]

POLICY_VERSIONS = ("2012-10-17", "2008-10-17")
_TOP_ELEMENTS = {"Version", "Id", "Statement"}
_STATEMENT_ELEMENTS = {
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
}
_PRINCIPAL_TYPES = {"AWS", "Service", "Federated", "CanonicalUser"}

_STRING_OPS = {
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
}
_ARN_OPS = {"ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLike"}
_NUMERIC_OPS = {
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
}
_DATE_OPS = {
    "DateEquals",
    "DateNotEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
}
_OTHER_OPS = {"Bool", "Null", "BinaryEquals", "IpAddress", "NotIpAddress"}
_ALL_OPS = _STRING_OPS | _ARN_OPS | _NUMERIC_OPS | _DATE_OPS | _OTHER_OPS
_NEGATED_OPS = {
    "StringNotEquals",
    "StringNotEqualsIgnoreCase",
    "StringNotLike",
    "ArnNotEquals",
    "ArnNotLike",
    "NumericNotEquals",
    "DateNotEquals",
    "NotIpAddress",
}

_ACCOUNT_RE = re.compile(r"^\d{12}$")
_IAM_ARN_RE = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::(\d{12}):.+$")
_ACTION_RE = re.compile(r"^[A-Za-z0-9-]+:[A-Za-z0-9*?]+$")


class PolicyError(ValueError):
    """The document is not a valid key policy (MalformedPolicyDocumentException)."""


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"  # explicit deny
    NONE = "none"  # no statement applies: implicit deny


@dataclass(frozen=True)
class Condition:
    operator: str  # base operator, e.g. "StringEquals"
    set_op: str | None  # None | "ForAnyValue" | "ForAllValues"
    if_exists: bool
    key: str  # as written
    values: tuple[str, ...]


@dataclass(frozen=True)
class Statement:
    effect: str  # "Allow" | "Deny"
    sid: str = ""
    principals: tuple[tuple[str, str], ...] | None = None  # (type, value); None = absent
    not_principals: tuple[tuple[str, str], ...] | None = None
    actions: tuple[str, ...] | None = None
    not_actions: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None
    not_resources: tuple[str, ...] | None = None
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]
    version: str = "2012-10-17"
    id: str = ""


@dataclass(frozen=True)
class Request:
    """One authorization question: may ``principal_arn`` do ``action`` on ``resource``?

    ``context`` holds condition keys (any case) → a string, a bool, or a list of strings
    for multi-valued keys (``kms:GrantOperations``, ``kms:EncryptionContextKeys``).
    """

    action: str  # "kms:Decrypt"
    principal_arn: str
    principal_account: str
    resource: str  # key ARN
    context: Mapping[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- parsing


def parse_policy(text: str) -> Policy:
    """Parse and validate a key policy document; raise :class:`PolicyError` if malformed."""
    try:
        doc = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"The policy is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PolicyError("The policy must be a JSON object.")
    unknown = set(doc) - _TOP_ELEMENTS
    if unknown:
        raise PolicyError(f"Policy contains an unknown element: {sorted(unknown)[0]}")
    version = doc.get("Version", "2008-10-17")
    if version not in POLICY_VERSIONS:
        raise PolicyError(f"Policy has an invalid Version: {version!r}")
    policy_id = doc.get("Id", "")
    if not isinstance(policy_id, str):
        raise PolicyError("Policy Id must be a string.")
    raw = doc.get("Statement")
    if raw is None:
        raise PolicyError("Policy is missing the required Statement element.")
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise PolicyError("Policy Statement must be a non-empty list of statements.")
    return Policy(
        statements=tuple(_parse_statement(s) for s in raw), version=version, id=policy_id
    )


def _parse_statement(raw: Any) -> Statement:
    if not isinstance(raw, dict):
        raise PolicyError("Each policy statement must be a JSON object.")
    unknown = set(raw) - _STATEMENT_ELEMENTS
    if unknown:
        raise PolicyError(f"Policy statement contains an unknown element: {sorted(unknown)[0]}")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f"Policy statement has an invalid Effect: {effect!r}")
    sid = raw.get("Sid", "")
    if not isinstance(sid, str):
        raise PolicyError("Policy statement Sid must be a string.")
    if ("Principal" in raw) == ("NotPrincipal" in raw):
        raise PolicyError("A key policy statement must have exactly one of Principal or NotPrincipal.")
    if ("Action" in raw) == ("NotAction" in raw):
        raise PolicyError("A policy statement must have exactly one of Action or NotAction.")
    if ("Resource" in raw) == ("NotResource" in raw):
        # A key policy statement names its resource ("*": this key).
        raise PolicyError("A key policy statement must have exactly one of Resource or NotResource.")
    return Statement(
        effect=effect,
        sid=sid,
        principals=_parse_principal(raw["Principal"]) if "Principal" in raw else None,
        not_principals=_parse_principal(raw["NotPrincipal"]) if "NotPrincipal" in raw else None,
        actions=_parse_actions(raw["Action"]) if "Action" in raw else None,
        not_actions=_parse_actions(raw["NotAction"]) if "NotAction" in raw else None,
        resources=_strings(raw["Resource"], "Resource") if "Resource" in raw else None,
        not_resources=_strings(raw["NotResource"], "NotResource") if "NotResource" in raw else None,
        conditions=_parse_conditions(raw.get("Condition", {})),
    )


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise PolicyError(f"Policy {what} must be a string or a non-empty list of strings.")


def _parse_principal(value: Any) -> tuple[tuple[str, str], ...]:
    if value == "*":
        return (("AWS", "*"),)
    if not isinstance(value, dict) or not value:
        raise PolicyError("Policy contains a statement with one or more invalid principals.")
    out: list[tuple[str, str]] = []
    for ptype, pvalues in value.items():
        if ptype not in _PRINCIPAL_TYPES:
            raise PolicyError("Policy contains a statement with one or more invalid principals.")
        for v in _strings(pvalues, "Principal"):
            if ptype == "AWS" and not (v == "*" or _ACCOUNT_RE.match(v) or _IAM_ARN_RE.match(v)):
                raise PolicyError("Policy contains a statement with one or more invalid principals.")
            out.append((ptype, v))
    return tuple(out)


def _parse_actions(value: Any) -> tuple[str, ...]:
    actions = _strings(value, "Action")
    for a in actions:
        if a != "*" and not _ACTION_RE.match(a):
            raise PolicyError(f"Policy contains an invalid action: {a!r}")
    return actions


def _parse_conditions(value: Any) -> tuple[Condition, ...]:
    if not isinstance(value, dict):
        raise PolicyError("Policy Condition must be a JSON object.")
    out: list[Condition] = []
    for op_name, block in value.items():
        set_op = None
        base = op_name
        if ":" in base:
            set_op, base = base.split(":", 1)
            if set_op not in ("ForAnyValue", "ForAllValues"):
                raise PolicyError(f"Policy contains an invalid condition operator: {op_name}")
        if_exists = base.endswith("IfExists") and base != "IfExists"
        if if_exists:
            base = base[: -len("IfExists")]
        if base not in _ALL_OPS or (if_exists and base == "Null"):
            raise PolicyError(f"Policy contains an invalid condition operator: {op_name}")
        if not isinstance(block, dict) or not block:
            raise PolicyError(f"Condition operator {op_name} must map condition keys to values.")
        for key, raw_values in block.items():
            if not isinstance(key, str) or ":" not in key:
                raise PolicyError(f"Policy contains an invalid condition key: {key!r}")
            vals = raw_values if isinstance(raw_values, list) else [raw_values]
            if not vals or not all(isinstance(v, (str, bool, int, float)) for v in vals):
                raise PolicyError(f"Condition {op_name} {key} has invalid values.")
            out.append(
                Condition(
                    operator=base,
                    set_op=set_op,
                    if_exists=if_exists,
                    key=key,
                    values=tuple(_to_str(v) for v in vals),
                )
            )
    return tuple(out)


def _to_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# ------------------------------------------------------------------------- evaluation


def evaluate(policy: Policy, request: Request) -> Decision:
    """Decide ``request``: DENY if any Deny applies, else ALLOW if any Allow applies."""
    ctx = {k.lower(): v for k, v in request.context.items()}
    allowed = False
    for st in policy.statements:
        if not _statement_applies(st, request, ctx):
            continue
        if st.effect == "Deny":
            return Decision.DENY
        allowed = True
    return Decision.ALLOW if allowed else Decision.NONE


def condition_keys(policy: Policy) -> tuple[str, ...]:
    """The context keys (lower case) the policy's conditions read."""
    return tuple(sorted({c.key.lower() for st in policy.statements for c in st.conditions}))


def decision_inputs(keys: tuple[str, ...], request: Request) -> tuple[Any, ...]:
    """All that :func:`evaluate` reads of ``request`` for a policy whose
    :func:`condition_keys` are ``keys``: the action, the principal, the resource, and each
    key's values as the conditions see them (strings, ``None`` when absent). Equal inputs
    give equal decisions, so a decision may be remembered by them."""
    ctx = {k.lower(): v for k, v in request.context.items()}
    seen = []
    for key in keys:
        values = _lookup(ctx, key)
        seen.append(None if values is None else tuple(values))
    return (request.action, request.principal_arn, request.principal_account, request.resource, tuple(seen))


def _statement_applies(st: Statement, req: Request, ctx: Mapping[str, Any]) -> bool:
    if st.principals is not None and not _principal_in(st.principals, req):
        return False
    if st.not_principals is not None and _principal_in(st.not_principals, req):
        return False
    if st.actions is not None and not any(_action_matches(a, req.action) for a in st.actions):
        return False
    if st.not_actions is not None and any(_action_matches(a, req.action) for a in st.not_actions):
        return False
    if st.resources is not None and not any(_wild(r, req.resource) for r in st.resources):
        return False
    if st.not_resources is not None and any(_wild(r, req.resource) for r in st.not_resources):
        return False
    return all(_condition_holds(c, ctx) for c in st.conditions)


def principal_matches(value: str, principal_arn: str, principal_account: str, ptype: str = "AWS") -> bool:
    """Does a policy/grant principal ``value`` name this caller?

    An account (``ACCT`` or ``arn:aws:iam::ACCT:root``) names every principal of that
    account (no IAM in ebscrypt: the account's own IAM is taken to allow them).
    """
    if ptype == "Service":
        return value == principal_arn
    if ptype != "AWS":
        return False
    if value == "*":
        return True
    if _ACCOUNT_RE.match(value):
        return value == principal_account
    m = _IAM_ARN_RE.match(value)
    if m and value.endswith(":root"):
        return m.group(2) == principal_account
    return value == principal_arn


def _principal_in(principals: Sequence[tuple[str, str]], req: Request) -> bool:
    return any(principal_matches(v, req.principal_arn, req.principal_account, t) for t, v in principals)


def _action_matches(pattern: str, action: str) -> bool:
    return _wild(pattern.lower(), action.lower())


_WILD_CACHE: dict[str, re.Pattern[str]] = {}


def _wild(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcard match: ``*`` any run of characters, ``?`` one character."""
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == value.lower() if ignore_case else pattern == value
    key = ("i" if ignore_case else "c") + pattern
    rx = _WILD_CACHE.get(key)
    if rx is None:
        body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
        rx = re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))
        if len(_WILD_CACHE) < 4096:
            _WILD_CACHE[key] = rx
    return rx.match(value) is not None


def _lookup(ctx: Mapping[str, Any], key: str) -> list[str] | None:
    v = ctx.get(key.lower())
    if v is None:
        return None
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_to_str(x) for x in v]
    return [_to_str(v)]


def _condition_holds(c: Condition, ctx: Mapping[str, Any]) -> bool:
    present = _lookup(ctx, c.key)
    if c.operator == "Null":
        want_absent = any(v.lower() == "true" for v in c.values)
        return (present is None or present == []) == want_absent
    if present is None:
        if c.if_exists or c.set_op == "ForAllValues":
            return True
        return c.operator in _NEGATED_OPS and c.set_op is None
    negated = c.operator in _NEGATED_OPS
    positive = _POSITIVE[c.operator]

    def one(v: str) -> bool:
        return any(positive(v, want) for want in c.values)

    if c.set_op == "ForAllValues":
        return all((not one(v)) if negated else one(v) for v in present)
    if c.set_op == "ForAnyValue":
        return any((not one(v)) if negated else one(v) for v in present)
    # A single-valued operator on a multi-valued key behaves like ForAnyValue for positive
    # operators; a negated operator holds only if no value matches.
    if negated:
        return not any(one(v) for v in present)
    return any(one(v) for v in present)


def _num(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _date(s: str) -> datetime | None:
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        try:
            from datetime import timezone

            return datetime.fromtimestamp(float(s), tz=timezone.utc)
        except ValueError:
            return None


def _cmp(conv: Any, fn: Any) -> Any:
    def check(v: str, want: str) -> bool:
        a, b = conv(v), conv(want)
        if a is None or b is None:
            return False
        try:
            return bool(fn(a, b))
        except TypeError:  # naive vs aware datetimes
            return False

    return check


_EQ = lambda a, b: a == b  # noqa: E731
_POSITIVE: dict[str, Any] = {
    "StringEquals": lambda v, w: v == w,
    "StringNotEquals": lambda v, w: v == w,
    "StringEqualsIgnoreCase": lambda v, w: v.lower() == w.lower(),
    "StringNotEqualsIgnoreCase": lambda v, w: v.lower() == w.lower(),
    "StringLike": lambda v, w: _wild(w, v),
    "StringNotLike": lambda v, w: _wild(w, v),
    "ArnEquals": lambda v, w: _wild(w, v),
    "ArnLike": lambda v, w: _wild(w, v),
    "ArnNotEquals": lambda v, w: _wild(w, v),
    "ArnNotLike": lambda v, w: _wild(w, v),
    "Bool": lambda v, w: v.lower() == w.lower(),
    "BinaryEquals": lambda v, w: v == w,
    "IpAddress": lambda v, w: False,  # no source IPs in ebscrypt requests
    "NotIpAddress": lambda v, w: False,
    "NumericEquals": _cmp(_num, _EQ),
    "NumericNotEquals": _cmp(_num, _EQ),
    "NumericLessThan": _cmp(_num, lambda a, b: a < b),
    "NumericLessThanEquals": _cmp(_num, lambda a, b: a <= b),
    "NumericGreaterThan": _cmp(_num, lambda a, b: a > b),
    "NumericGreaterThanEquals": _cmp(_num, lambda a, b: a >= b),
    "DateEquals": _cmp(_date, _EQ),
    "DateNotEquals": _cmp(_date, _EQ),
    "DateLessThan": _cmp(_date, lambda a, b: a < b),
    "DateLessThanEquals": _cmp(_date, lambda a, b: a <= b),
    "DateGreaterThan": _cmp(_date, lambda a, b: a > b),
    "DateGreaterThanEquals": _cmp(_date, lambda a, b: a >= b),
}


# ------------------------------------------------------------------- standard policies


def default_key_policy(account: str) -> str:
    """AWS's default key policy: the account (and through IAM, its principals) has kms:*."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        },
        indent=2,
    )


def aws_managed_policy(account: str, region: str, service: str = "ec2") -> str:
    """The policy of an AWS managed key (``alias/aws/ebs``): use only via the service."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "auto-ebs-2",
            "Statement": [
                {
                    "Sid": "Allow access through EBS for all principals in the account that are authorized to use EBS",
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": [
                        "kms:Encrypt",
                        "kms:Decrypt",
                        "kms:ReEncrypt*",
                        "kms:GenerateDataKey*",
                        "kms:CreateGrant",
                        "kms:DescribeKey",
                    ],
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {
                            "kms:ViaService": f"{service}.{region}.amazonaws.com",
                            "kms:CallerAccount": account,
                        }
                    },
                },
                {
                    "Sid": "Allow direct access to key metadata to the account",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": ["kms:Describe*", "kms:Get*", "kms:List*", "kms:RevokeGrant"],
                    "Resource": "*",
                },
            ],
        },
        indent=2,
    )
