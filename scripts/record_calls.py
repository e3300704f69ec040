#!/usr/bin/env python3
"""Record the responses a test run gets, and compare two recordings (a refactoring's
"same responses before and after" check, issue 11).

Record (a pytest plugin: every boto3/botocore client of the run is hooked)::

    EBSCRYPT_RECORD=/tmp/before.jsonl PYTHONPATH=scripts \\
        python3 -m pytest -q -p no:cacheprovider -p record_calls tests/integration/test_kms_api.py

Each call appends one JSON line: service, operation, the request params and the parsed
response (or the error code and message, and the HTTP status).

Compare::

    python3 scripts/record_calls.py before.jsonl after.jsonl [--service kms]

Values that differ between any two runs are normalized first: ids (UUIDs, long hex or
base64 tokens) are renamed in order of first appearance (so the same id must still
appear in the same places), timestamps become ``<time>``, and binary values become their
length (ciphertexts and random bytes differ, their sizes must not, to within the few
bytes a DER encoding varies by); opaque tokens become ``<token>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import threading
from typing import Any

_lock = threading.Lock()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": len(value)}
    if isinstance(value, dt.datetime):
        return {"__time__": value.isoformat()}
    if hasattr(value, "read"):  # a streaming body
        return {"__stream__": True}
    return value


def _record(path: str, model: Any, params: Any, parsed: Any, http: Any) -> None:
    parsed = dict(parsed or {})
    meta = parsed.pop("ResponseMetadata", {}) or {}
    line = {
        "service": model.service_model.service_name,
        "operation": model.name,
        "params": _jsonable(params.get("body") if isinstance(params, dict) else None),
        "status": getattr(http, "status_code", meta.get("HTTPStatusCode")),
        "response": _jsonable(parsed),
    }
    with _lock, open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=True, default=str) + "\n")


# --------------------------------------------------------------------------- pytest plugin


def pytest_configure(config: Any) -> None:
    path = os.environ.get("EBSCRYPT_RECORD")
    if not path:
        return
    import botocore.session

    original = botocore.session.Session.create_client

    def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = original(self, *args, **kwargs)
        requests: dict[int, Any] = {}

        def before(params: Any, model: Any, **_: Any) -> None:
            requests[threading.get_ident()] = params

        def after(http_response: Any, parsed: Any, model: Any, **_: Any) -> None:
            _record(path, model, requests.pop(threading.get_ident(), {}), parsed, http_response)

        client.meta.events.register("before-call", before)
        client.meta.events.register("after-call", after)
        return client

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]


# --------------------------------------------------------------------------- compare

_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # UUID (key ids, request ids)
    r"|\b(?:vol|snap|ami|i|lt|sg|key|vpc|subnet|sgr|igw|rtb|acl|eni)-[0-9a-f]{8,17}\b"  # EC2 ids
    r"|\b[0-9a-f]{32,}\b"  # hex ids (grant ids, key material ids)
)
# Opaque tokens (grant, block and page tokens): they embed an expiry time, so two calls a
# second apart get different ones; only their presence is compared.
_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{24,}={0,2}")
# DER encodings (ECDSA signatures, RSA private keys) vary by a few bytes from one key or
# signature to the next: binary lengths are compared to within this many bytes.
_DER_SLACK = 8


class _Normalizer:
    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def text(self, value: str) -> str:
        def rename(match: re.Match[str]) -> str:
            token = match.group(0)
            if token not in self.names:
                self.names[token] = f"<id{len(self.names) + 1}>"
            return self.names[token]

        return _TOKEN.sub("<token>", _ID.sub(rename, value))

    def value(self, value: Any) -> Any:
        if isinstance(value, dict):
            if "__time__" in value:
                return "<time>"
            return {k: self.value(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, dict) and isinstance(y, dict):
        if "__bytes__" in x and "__bytes__" in y:
            return abs(x["__bytes__"] - y["__bytes__"]) <= _DER_SLACK
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    return bool(x == y)


def _load(path: str, service: str | None) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        calls = [json.loads(line) for line in f if line.strip()]
    return [c for c in calls if service is None or c["service"] == service]


def compare(before: str, after: str, service: str | None = None) -> list[str]:
    a, b = _load(before, service), _load(after, service)
    problems: list[str] = []
    if len(a) != len(b):
        problems.append(f"{len(a)} calls before, {len(b)} after")
    na, nb = _Normalizer(), _Normalizer()
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = na.value(x), nb.value(y)
        if not _same(x, y):
            problems.append(
                f"call {i + 1} {x['operation']}:\n  before {json.dumps(x, sort_keys=True)}\n"
                f"  after  {json.dumps(y, sort_keys=True)}"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compare two recordings of a test run's calls")
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--service", help="only this service's calls (e.g. kms)")
    args = parser.parse_args(argv)
    problems = compare(args.before, args.after, args.service)
    total = len(_load(args.before, args.service))
    for p in problems[:20]:
        print(p)
    print(f"{total} calls compared, {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
