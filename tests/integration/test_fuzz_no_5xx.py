"""No input gets a 5xx: every operation ebscrypt implements, of the *installed* ec2, kms
and ebs models, with each top-level member left out in turn and each member set to
boundary values (issue 10 item 2; DESIGN "bad input gets a clear 4xx error").

Per operation a base request is built from the model (real ids of resources made first,
enum values, a timestamp in every timestamp member), then varied: each top-level member
dropped; each top-level member's subtree given integers 2**31, 2**63 and -1, a
10,000-character string, a non-numeric string, a 20-digit string and extreme timestamps.
Requests are serialized by botocore (``include_validation=False``: the invalid values
reach the server), signed, and sent over one pooled HTTP connection per worker: a full
boto3 call per request would cost more than the server's work. Operations that destroy
the fixtures (Delete*, Terminate*, …) run last. The figure (requests sent, responses
>= 500) is printed; run with ``-s`` to see it.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import botocore.auth
import botocore.credentials
import botocore.serialize
import pytest
import urllib3
from botocore.awsrequest import create_request_object, prepare_request_dict

from ebscrypt.services import registry
from ebscrypt.wire.codec import codec_for, required
from tests.conftest import ServerProcess, make_client

ACCOUNT = "555555555501"
REGION = "us-east-1"
SERVICES = ("ec2", "kms", "ebs")
MAX_DEPTH = 4
# Operations that destroy what the others use run after them.
_DESTRUCTIVE = re.compile(r"^(Delete|Deregister|Terminate|Stop|ScheduleKeyDeletion|Disable|Revoke|Retire|Reset"
                          r"|Detach|Untag|Cancel)")

INT_BOUNDARIES = (2**31, 2**63, -1)
STR_BOUNDARIES = ("x" * 10_000, "abc", "99999999999999999999")
TS_BOUNDARIES = (dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),
                 dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc))


class Fixtures:
    """Ids of real resources, so that requests reach past the id checks into the engines."""

    def __init__(self, endpoint: str) -> None:
        ec2 = make_client(endpoint, "ec2", ACCOUNT, REGION)
        kms = make_client(endpoint, "kms", ACCOUNT, REGION)
        self.key = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/fuzz", TargetKeyId=self.key)
        self.grant = kms.create_grant(KeyId=self.key, GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:root",
                                      Operations=["Decrypt"])["GrantId"]
        self.volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1)["VolumeId"]
        ec2.get_waiter("volume_available").wait(VolumeIds=[self.volume], WaiterConfig={"Delay": 0.2})
        self.snapshot = ec2.create_snapshot(VolumeId=self.volume)["SnapshotId"]
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[self.snapshot], WaiterConfig={"Delay": 0.2})
        self.image = ec2.register_image(
            Name="fuzz", RootDeviceName="/dev/xvda",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": self.snapshot}}],
        )["ImageId"]
        self.instance = ec2.run_instances(ImageId=self.image, MinCount=1, MaxCount=1,
                                          InstanceType="t3.micro")["Instances"][0]["InstanceId"]
        self.template = ec2.create_launch_template(
            LaunchTemplateName="fuzz", LaunchTemplateData={"ImageId": self.image})["LaunchTemplate"]
        self.group = ec2.create_security_group(GroupName="fuzz", Description="fuzz")["GroupId"]
        ec2.create_key_pair(KeyName="fuzz")

    def string_for(self, name: str, shape: Any) -> str:
        """A plausible value for a string member, by its name (ids name real resources)."""
        low = name.lower()
        if shape.enum:
            return shape.enum[0]
        if "launchtemplateid" in low:
            return self.template["LaunchTemplateId"]
        if "launchtemplatename" in low:
            return "fuzz"
        if low in ("keyid", "targetkeyid", "kmskeyid", "destinationkeyid", "sourcekeyid"):
            return self.key
        if "alias" in low:
            return "alias/fuzz"
        if "grantid" in low:
            return self.grant
        if "principal" in low:
            return f"arn:aws:iam::{ACCOUNT}:root"
        if "snapshotid" in low:
            return self.snapshot
        if "volumeid" in low:
            return self.volume
        if "imageid" in low:
            return self.image
        if "instanceid" in low:
            return self.instance
        if "groupid" in low:
            return self.group
        if low in ("keyname",):
            return "fuzz"
        if "region" in low:
            return REGION
        if "availabilityzone" in low:
            return f"{REGION}a"
        if low in ("resource", "resources", "resourceid"):
            return self.volume
        if low == "policy":
            return '{"Version":"2012-10-17","Statement":[]}'
        if low in ("version", "versions", "minversion", "maxversion", "defaultversion",
                   "launchtemplateversion", "sourceversion"):
            return "1"
        pattern = shape.metadata.get("pattern")
        for candidate in ("fuzz", "1", "arn:aws:iam::555555555501:root", "a1"):
            if not pattern or re.search(pattern, candidate):
                return candidate
        return "fuzz"


def _value(fx: Fixtures, name: str, shape: Any, depth: int) -> Any:
    t = shape.type_name
    if t == "structure":
        if depth >= MAX_DEPTH or shape.metadata.get("document"):
            return {}
        return {n: _value(fx, n, m, depth + 1) for n, m in shape.members.items()
                if m.serialization.get("location") not in ("headers", "statusCode")}
    if t == "list":
        return [_value(fx, name, shape.member, depth + 1)] if depth < MAX_DEPTH else []
    if t == "map":
        return {"k": _value(fx, name, shape.value, depth + 1)} if depth < MAX_DEPTH else {}
    if t == "string":
        return fx.string_for(name, shape)
    if t in ("integer", "long"):
        low = name.lower()
        if "count" in low:
            return 1
        return max(1, shape.metadata.get("min", 1))
    if t in ("float", "double"):
        return 1.0
    if t == "boolean":
        return name in ("Encrypted",)
    if t == "blob":
        return b"fuzz"
    if t == "timestamp":
        return dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    return None


def _replace(value: Any, shape: Any, kind: str, boundary: Any) -> tuple[Any, bool]:
    """``value`` with every scalar of type ``kind`` in it set to ``boundary``."""
    t = shape.type_name
    if t == "structure":
        if not isinstance(value, dict) or shape.metadata.get("document"):
            return value, False
        out, hit = {}, False
        for k, v in value.items():
            out[k], h = _replace(v, shape.members[k], kind, boundary)
            hit |= h
        return out, hit
    if t == "list":
        pairs = [_replace(v, shape.member, kind, boundary) for v in value]
        return [p[0] for p in pairs], any(p[1] for p in pairs)
    if t == "map":
        pairs = {k: _replace(v, shape.value, kind, boundary) for k, v in value.items()}
        return {k: p[0] for k, p in pairs.items()}, any(p[1] for p in pairs.values())
    group = {"integer": "int", "long": "int", "string": "str", "timestamp": "ts"}.get(t)
    if group == kind:
        return boundary, True
    return value, False


def _variants(service: str, op: Any, base: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The base; each member dropped from it; and each member's boundary values, set in the
    full base and in the minimal one (the required members alone), so that a check that
    refuses the full base early (two members that exclude each other) hides nothing."""
    shape = op.input_shape
    needed = {group[0] for group in required.required_groups(service, shape)}
    minimal = {k: v for k, v in base.items() if k in needed}
    yield "base", base
    yield "minimal", minimal
    for name, member in shape.members.items():
        if name not in base:
            continue
        located = member.serialization.get("location")
        if not (service == "ebs" and located == "uri"):  # a URI label cannot be left out
            yield f"-{name}", {k: v for k, v in base.items() if k != name}
        if name not in minimal:
            yield f"min+{name}", {**minimal, name: base[name]}
        for kind, boundaries in (("int", INT_BOUNDARIES), ("str", STR_BOUNDARIES), ("ts", TS_BOUNDARIES)):
            for boundary in boundaries:
                replaced, hit = _replace(base[name], member, kind, boundary)
                if hit:
                    shown = boundary if not isinstance(boundary, str) or len(boundary) < 30 else "10000*x"
                    yield f"{name}={shown}", {**base, name: replaced}
                    yield f"min+{name}={shown}", {**minimal, name: replaced}


class Sender:
    """botocore-serialized, SigV4-signed requests over a pooled HTTP connection."""

    def __init__(self, server: ServerProcess) -> None:
        self.url = server.url
        self.pool = urllib3.HTTPConnectionPool("127.0.0.1", server.port, maxsize=4, retries=False,
                                               timeout=urllib3.Timeout(connect=10, read=120))
        creds = botocore.credentials.Credentials(ACCOUNT, "ebscrypt-dev-secret")
        self.signers = {s: botocore.auth.SigV4Auth(creds, s, REGION) for s in SERVICES}
        self.serializers = {
            s: botocore.serialize.create_serializer(codec_for(s).service_model.protocol, include_validation=False)
            for s in SERVICES
        }

    def send(self, service: str, op: Any, params: dict[str, Any]) -> tuple[int, bytes]:
        serialized = self.serializers[service].serialize_to_request(params, op)
        prepare_request_dict(serialized, self.url)
        request = create_request_object(serialized)
        self.signers[service].add_auth(request)
        prepared = request.prepare()
        path = prepared.url[len(self.url):] or "/"
        response = self.pool.urlopen(prepared.method, path, body=prepared.body, headers=dict(prepared.headers),
                                     preload_content=True, redirect=False)
        return response.status, response.data


def _plan(fx: Fixtures) -> list[tuple[str, Any, str, dict[str, Any]]]:
    plan = []
    for service in SERVICES:
        model = codec_for(service).service_model
        for name in registry.operations(service):
            if name not in model.operation_names:
                continue
            op = model.operation_model(name)
            if op.input_shape is None:
                plan.append((service, op, "base", {}))
                continue
            base = _value(fx, name, op.input_shape, 0)
            plan.extend((service, op, label, params) for label, params in _variants(service, op, base))
    plan.sort(key=lambda p: bool(_DESTRUCTIVE.match(p[1].name)))
    return plan


def test_no_operation_answers_5xx(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    fx = Fixtures(server.url)
    plan = _plan(fx)
    sender = Sender(server)
    started = time.monotonic()

    def run(item: tuple[str, Any, str, dict[str, Any]]) -> tuple[str, str, str, int, bytes]:
        service, op, label, params = item
        try:
            status, body = sender.send(service, op, params)
        except (ValueError, TypeError, KeyError) as exc:  # botocore cannot serialize this value
            return service, op.name, label, 0, repr(exc).encode()
        return service, op.name, label, status, body

    head = [p for p in plan if not _DESTRUCTIVE.match(p[1].name)]
    tail = plan[len(head):]
    results = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        results += list(pool.map(run, head))
        results += list(pool.map(run, tail))
    elapsed = time.monotonic() - started
    sent = [r for r in results if r[3]]
    fives = [(s, o, label, status, body[:300]) for s, o, label, status, body in sent if status >= 500]
    ok = sum(1 for r in sent if r[3] < 300)
    print(f"\nfuzz: {len(sent)} requests sent ({len(results) - len(sent)} not serializable), "
          f"{ok} answered 2xx, {len(sent) - ok - len(fives)} 4xx, {len(fives)} responses >= 500, {elapsed:.1f} s")
    unsent = {(s, o, label, body[:120]) for s, o, label, status, body in results if not status}
    for row in sorted(unsent)[:20]:
        print("  not sent:", row)
    for row in fives:
        print("  5xx:", row)
    assert len(sent) > 2000
    assert fives == []
