"""The pure origin checks behind issue 10, item 3 (see tests/integration/test_web_origin.py)."""

from __future__ import annotations

import pytest

from ebscrypt.wire.origin import OriginPolicy, host_name, preflight_headers, refusal


@pytest.mark.parametrize(
    "header, name",
    [("127.0.0.1:4566", "127.0.0.1"), ("LocalHost", "localhost"), ("[::1]:4566", "::1"), ("::1", "::1"),
     ("evil.example:80", "evil.example")],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_loopback_bind_serves_loopback_names_and_allowed_hosts_only() -> None:
    policy = OriginPolicy.for_server("127.0.0.1", ("lb.example:8080",))
    assert refusal(policy, {"host": "localhost:4566"}) is None
    assert refusal(policy, {"host": "lb.example"}) is None
    assert refusal(policy, {}) is None  # no Host at all: not a browser
    assert "--allowed-host rebind.example" in (refusal(policy, {"host": "rebind.example:4566"}) or "")
    assert refusal(policy, {"host": "10.0.0.5:4566"}) is not None  # an IP the server is not bound to


def test_wildcard_bind_accepts_ip_literals_but_not_foreign_names() -> None:
    policy = OriginPolicy.for_server("0.0.0.0")
    assert refusal(policy, {"host": "10.0.0.5:4566"}) is None
    assert refusal(policy, {"host": "[fd00::5]:4566"}) is None
    assert refusal(policy, {"host": "rebind.example"}) is not None


def test_origin_and_fetch_metadata() -> None:
    policy = OriginPolicy.for_server("127.0.0.1", (), ("https://app.example",))
    own = {"host": "127.0.0.1:4566"}
    assert refusal(policy, {**own, "origin": "http://127.0.0.1:4566"}) is None  # same origin
    assert refusal(policy, {**own, "origin": "http://127.0.0.1:8080"}) is not None  # same site, other origin
    assert refusal(policy, {**own, "origin": "https://APP.example/"}) is None
    assert refusal(policy, {**own, "origin": "null"}) is not None
    assert refusal(policy, {**own, "sec-fetch-site": "cross-site"}) is not None
    assert refusal(policy, {**own, "sec-fetch-site": "same-site"}) is not None
    assert refusal(policy, {**own, "sec-fetch-site": "none"}) is None
    assert refusal(policy, {**own, "sec-fetch-site": "cross-site", "origin": "https://app.example"}) is None
    # An older browser's <img> GET: no fetch metadata, but a Referer of the page.
    assert refusal(policy, {**own, "referer": "https://evil.example/page.html"}) is not None
    assert refusal(policy, {**own, "referer": "http://127.0.0.1:4566/console"}) is None
    assert refusal(policy, {**own, "referer": "https://app.example/x"}) is None
    assert preflight_headers(policy, {"origin": "https://evil.example"}) is None
    answer = dict(preflight_headers(policy, {"origin": "https://app.example",
                                             "access-control-request-headers": "x-amz-target"}) or [])
    assert answer["Access-Control-Allow-Origin"] == "https://app.example"
    assert answer["Access-Control-Allow-Headers"] == "x-amz-target"
