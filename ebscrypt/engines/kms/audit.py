"""The KMS audit trail: one CloudTrail-format JSON record per line.

Every KMS API call and every key use the EC2/EBS side makes on a caller's behalf is
appended to ``<data_dir>/audit/kms-audit.jsonl`` (written through per record, a lock
for threads). Records hold no secrets: no plaintext, no key material, no ciphertext.
"""

from __future__ import annotations

import contextvars
import json
from json.encoder import encode_basestring_ascii
import os
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO

from ebscrypt.blocking import WouldBlock
from ebscrypt.clock import Clock
from ebscrypt.context import Caller
from ebscrypt.errors import ServiceError
from ebscrypt.ids import uuid4_str
from ebscrypt.jsonenc import compact_encoder
from ebscrypt.storage.space import SpaceMonitor, is_out_of_space

AUDIT_RELATIVE = Path("audit") / "kms-audit.jsonl"

READ_ONLY_EVENTS = {
    "DescribeKey",
    "ListKeys",
    "ListAliases",
    "GetKeyPolicy",
    "ListKeyPolicies",
    "GetKeyRotationStatus",
    "ListKeyRotations",
    "ListGrants",
    "ListRetirableGrants",
    "ListResourceTags",
    "GetPublicKey",
}
# Request members never written to the audit trail (secrets, or bulky/irrelevant bytes).
_SECRET_MEMBERS = {"Plaintext", "CiphertextBlob", "Message", "Signature", "GrantTokens"}


@dataclass
class AuditEvent:
    """One KMS event in progress (the engine's ``audited`` block)."""

    caller: Caller
    name: str
    params: dict[str, Any]
    via_service: str | None
    request_id: str
    read_only: bool
    time: datetime
    resources: list[str] = field(default_factory=list)
    # key id -> the alias the request named it by (condition key kms:RequestAlias)
    request_aliases: dict[str, str] = field(default_factory=dict)
    error: tuple[str, str] | None = None


# The event of the running request, so that key resolution can note resources and aliases.
CURRENT_EVENT: contextvars.ContextVar[AuditEvent | None] = contextvars.ContextVar("kms_audit_event", default=None)
# The records of the running request's batch (AuditTrail.batch), None outside one.
_BATCH: contextvars.ContextVar[list[bytes] | None] = contextvars.ContextVar("kms_audit_batch", default=None)


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


# Member name -> its camelCase (the members of the KMS model and of the via-service calls;
# bounded all the same: cleared when full).
_CAMEL: dict[str, str] = {}
_MAX_CAMEL = 1024


def audit_params(request_parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``requestParameters``: the request without secrets or bytes, camelCase as CloudTrail."""
    out: dict[str, Any] = {}
    for k, v in request_parameters.items():
        if k in _SECRET_MEMBERS or isinstance(v, (bytes, bytearray)):
            continue
        if isinstance(v, datetime):
            v = v.isoformat()
        camel = _CAMEL.get(k)
        if camel is None:
            if len(_CAMEL) >= _MAX_CAMEL:
                _CAMEL.clear()
            camel = _CAMEL[k] = _camel(k)
        out[camel] = v
    return out


def _identity(c: Caller, via_service: str | None) -> dict[str, Any]:
    ident: dict[str, Any] = {
        "type": "Root" if c.arn.endswith(":root") else ("AssumedRole" if ":assumed-role/" in c.arn else "IAMUser"),
        "principalId": c.user_id,
        "arn": c.arn,
        "accountId": c.account,
    }
    if c.access_key:
        ident["accessKeyId"] = c.access_key
    if via_service:
        ident["invokedBy"] = via_service.split(".")[0] + ".amazonaws.com"
    return ident


def cloudtrail_record(ev: AuditEvent) -> dict[str, Any]:
    c = ev.caller
    ident = _identity(c, ev.via_service)
    rec: dict[str, Any] = {
        "eventVersion": "1.08",
        "userIdentity": ident,
        "eventTime": _utc_seconds(ev.time),
        "eventSource": "kms.amazonaws.com",
        "eventName": ev.name,
        "awsRegion": c.region,
        "sourceIPAddress": ident.get("invokedBy", "ebscrypt-client"),
        "userAgent": ident.get("invokedBy", "ebscrypt"),
        "requestParameters": ev.params or None,
        "responseElements": None,
        "requestID": ev.request_id,
        "eventID": uuid4_str(),
        "readOnly": ev.read_only,
        "resources": _resources(ev.resources),
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": c.account,
        "eventCategory": "Management",
    }
    if ev.error:
        rec["errorCode"], rec["errorMessage"] = ev.error
    return rec


def _resources(arns: list[str]) -> list[dict[str, str]]:
    return [{"accountId": arn.split(":")[4], "type": "AWS::KMS::Key", "ARN": arn} for arn in dict.fromkeys(arns)]


# The parts of a record that depend only on (caller, via service, event name), encoded
# once: a record is then a few strings joined around the request's own members (the
# whole record encoded as a dict each time was ~1/5 of a KMS data-key call's CPU on the
# event loop, bench/README.md section K). Bounded: cleared when full.
_PARTS: dict[tuple[Caller, str | None, str], tuple[str, str, str, str]] = {}
_MAX_PARTS = 4096


def _parts(c: Caller, via_service: str | None, name: str) -> tuple[str, str, str, str]:
    key = (c, via_service, name)
    parts = _PARTS.get(key)
    if parts is None:
        ident = _identity(c, via_service)
        head = '{"eventVersion":"1.08","userIdentity":' + _encode(ident) + ',"eventTime":"'
        middle = (
            '","eventSource":"kms.amazonaws.com","eventName":' + _encode(name)
            + ',"awsRegion":' + _encode(c.region)
            + ',"sourceIPAddress":' + _encode(ident.get("invokedBy", "ebscrypt-client"))
            + ',"userAgent":' + _encode(ident.get("invokedBy", "ebscrypt"))
            + ',"requestParameters":'
        )
        tail = (
            ',"eventType":"AwsApiCall","managementEvent":true,"recipientAccountId":' + _encode(c.account)
            + ',"eventCategory":"Management"'
        )
        read_only = "true" if name in READ_ONLY_EVENTS else "false"
        parts = (head, middle, tail, read_only)
        if len(_PARTS) >= _MAX_PARTS:
            _PARTS.clear()
        _PARTS[key] = parts
    return parts


def record_line(ev: AuditEvent) -> bytes:
    """The event's record as one line: the bytes of ``cloudtrail_record`` encoded
    (tests/unit/test_kms_audit_line.py compares them), most of it encoded once."""
    head, middle, tail, read_only = _parts(ev.caller, ev.via_service, ev.name)
    if ev.read_only != (read_only == "true"):
        read_only = "true" if ev.read_only else "false"
    if len(ev.resources) == 1:
        arn = ev.resources[0]
        resources = '[{"accountId":' + _text(arn.split(":")[4]) + ',"type":"AWS::KMS::Key","ARN":' + _text(arn) + "}]"
    else:
        resources = _encode(_resources(ev.resources))
    error = ""
    if ev.error:
        error = ',"errorCode":' + _encode(ev.error[0]) + ',"errorMessage":' + _encode(ev.error[1])
    line = "".join((
        head, _utc_seconds(ev.time), middle, _encode(ev.params or None),
        ',"responseElements":null,"requestID":', _text(ev.request_id),
        ',"eventID":"', uuid4_str(), '","readOnly":', read_only, ',"resources":', resources,
        tail, error, "}\n",
    ))
    return line.encode()


def _utc_seconds(time: datetime) -> str:
    """``2026-01-02T03:04:05Z`` (the clock's times are UTC): ``isoformat`` is a third of
    ``strftime``'s cost, and this runs once per KMS call."""
    return time.isoformat(timespec="seconds")[:19] + "Z"


# One encoder for every record, its C encoder made once (ebscrypt/jsonenc.py). Records are
# trees (no cycle check needed).
_encode = compact_encoder(default=str)
# A string as ``_encode`` writes it (ensure_ascii: the encoder's own C function for str).
_text = encode_basestring_ascii


def audit_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / AUDIT_RELATIVE


class AuditLog:
    """Appends records; each record is one ``write(2)`` on an ``O_APPEND`` descriptor, so
    lines from threads (a lock) and from several server processes never interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None

    def append(self, record: dict[str, Any]) -> None:
        self.append_line((_encode(record) + "\n").encode())

    def append_line(self, line: bytes) -> None:
        """One encoded record (ending with a newline)."""
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            view = memoryview(line)
            written = 0
            try:
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                    written += n
            except OSError:
                if written:
                    # A record cut short (disk full) would corrupt the line after it: cut
                    # it off again. O_APPEND leaves the offset at the end of our bytes.
                    os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_CUR) - written)
                raise

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class AuditTrail:
    """The audit hook every KMS event runs in (:meth:`audited`)."""

    def __init__(self, log: AuditLog, space: SpaceMonitor, clock: Clock) -> None:
        self.log = log
        self.space = space
        self.clock = clock

    def audited(
        self,
        caller: Caller,
        event_name: str,
        request_parameters: Mapping[str, Any] | None = None,
        *,
        via_service: str | None = None,
        request_id: str | None = None,
    ) -> AuditedEvent:
        """Run one KMS event (``with trail.audited(...) as ev:``); append its CloudTrail
        record (with errorCode if refused). ``request_parameters``: the members as the
        caller sent them, for the record's ``requestParameters`` (secrets and bytes left out).

        Fail closed: an event that cannot be recorded does not happen. With too little
        space left for its record the operation is refused before it runs; a record
        that still cannot be appended turns the answer into the same 503, so no result
        (plaintext, data key) leaves without its record (see README.md, "Audit trail").
        """
        return AuditedEvent(self, caller, event_name, request_parameters, via_service, request_id)

    def batch(self) -> AuditBatch:
        """Within the block, the records of events are kept and appended together, in
        one ``write(2)``, when the block ends (however it ends).

        For one caller request that makes several KMS uses on the caller's behalf before
        it commits anything (an encrypted CreateVolume: DescribeKey,
        GenerateDataKeyWithoutPlaintext, CreateGrant, Decrypt). Fail closed as before: the
        free-space check runs when the block starts, and a batch that cannot be appended
        raises the same 503 at the block's end — so the block must end before anything
        its events produced is committed or answered (the EC2 create paths: the plan and
        data key are used only after :meth:`KeyEngine.key_row_scope` ends). Kill -9 inside
        the block loses its records, and with them nothing was stored or answered.
        Nested blocks share the outermost one.
        """
        return AuditBatch(self)

    def close(self) -> None:
        self.log.close()


class AuditBatch:
    """The context manager of :meth:`AuditTrail.batch`."""

    __slots__ = ("_trail", "_lines", "_token")

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail
        self._lines: list[bytes] = []
        self._token: contextvars.Token[list[bytes] | None] | None = None

    def __enter__(self) -> None:
        if _BATCH.get() is not None:
            return  # nested: the outermost batch writes
        self._trail.space.require("the KMS audit records of this request")
        self._token = _BATCH.set(self._lines)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._token is None:
            return
        _BATCH.reset(self._token)
        if not self._lines:
            return
        try:
            self._trail.log.append_line(b"".join(self._lines))
        except OSError as error:
            if not is_out_of_space(error):
                raise
            raise self._trail.space.error("the KMS audit records of this request", error) from error


class AuditedEvent:
    """The context manager of :meth:`AuditTrail.audited` (a class, not a generator: two of
    them wrap every KMS call, issue 15)."""

    __slots__ = ("_trail", "_args", "_event", "_token")

    def __init__(
        self, trail: AuditTrail, caller: Caller, event_name: str, request_parameters: Mapping[str, Any] | None,
        via_service: str | None, request_id: str | None,
    ) -> None:
        self._trail = trail
        self._args = (caller, event_name, request_parameters, via_service, request_id)

    def __enter__(self) -> AuditEvent:
        caller, event_name, request_parameters, via_service, request_id = self._args
        if _BATCH.get() is None:  # a batch checked when it started
            self._trail.space.require(f"the KMS audit record of {event_name}")
        ev = AuditEvent(
            caller=caller,
            name=event_name,
            params=audit_params(request_parameters or {}),
            via_service=via_service,
            request_id=request_id or uuid4_str(),
            read_only=event_name in READ_ONLY_EVENTS,
            time=self._trail.clock.now(),
        )
        self._event = ev
        self._token = CURRENT_EVENT.set(ev)
        return ev

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        CURRENT_EVENT.reset(self._token)
        ev = self._event
        if exc is not None:
            if isinstance(exc, WouldBlock):
                # Not run: the gateway runs the request again in a worker thread, which
                # records it (ebscrypt/blocking.py). One request, one record.
                return
            if isinstance(exc, ServiceError):
                ev.error = (exc.code, exc.message)
            elif isinstance(exc, Exception):
                ev.error = ("KMSInternalException", "internal error")
        batch = _BATCH.get()
        if batch is not None:  # written when the batch ends (AuditTrail.batch)
            batch.append(record_line(ev))
            return
        try:
            self._trail.log.append_line(record_line(ev))
        except OSError as error:
            if not is_out_of_space(error):
                raise
            raise self._trail.space.error(f"the KMS audit record of {ev.name}", error) from error


def read_events(data_dir: Path | str) -> Iterator[dict[str, Any]]:
    path = audit_path(data_dir)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                yield json.loads(line)


def print_log(data_dir: Path | str, out: TextIO | None = None) -> int:
    """Print the audit trail (one JSON record per line); return the number of records."""
    out = out or sys.stdout
    n = 0
    for event in read_events(data_dir):
        out.write(json.dumps(event, sort_keys=False) + "\n")
        n += 1
    return n
