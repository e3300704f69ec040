"""The console's session cookies (console/session.py) and SVG lineage (console/svg.py)."""

from __future__ import annotations

import time

from ebscrypt.console import session as session_mod
from ebscrypt.console.session import Sessions
from ebscrypt.console.svg import render
from ebscrypt.engines.insight.records import Graph, Node
from ebscrypt.identity import Authenticator, Credential

ALICE = Credential("AKIAEXAMPLEALICE0001", "alice-secret", "123456789012")


def test_dev_sessions_pick_an_account() -> None:
    s = Sessions(Authenticator("dev", "000000000000"))
    cookie = s.sign_in("111111111111", None)
    assert cookie is not None and s.viewer(cookie).account == "111111111111"
    assert s.sign_in("alice", None) is None
    # another process (another random key) does not accept it; a forged account neither
    assert Sessions(Authenticator("dev", "000000000000")).viewer(cookie) is None
    principal, expiry, mac = cookie.split(".")
    assert s.viewer(f"222222222222.{expiry}.{mac}") is None


def test_strict_sessions_need_the_secret_and_expire(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    s = Sessions(Authenticator("strict", "000000000000", {ALICE.access_key: ALICE}))
    assert s.sign_in(ALICE.access_key, "wrong") is None
    assert s.sign_in("123456789012", None) is None
    cookie = s.sign_in(ALICE.access_key, "alice-secret")
    assert cookie is not None and "alice-secret" not in cookie
    viewer = s.viewer(cookie)
    assert viewer is not None and (viewer.account, viewer.principal) == ("123456789012", ALICE.access_key)
    # verified with the secret of the credentials file: another process accepts it ...
    assert Sessions(Authenticator("strict", "0" * 12, {ALICE.access_key: ALICE})).viewer(cookie) == viewer
    # ... until the secret changes or the session expires
    rotated = Credential(ALICE.access_key, "new-secret", ALICE.account)
    assert Sessions(Authenticator("strict", "0" * 12, {ALICE.access_key: rotated})).viewer(cookie) is None
    now = time.time()
    monkeypatch.setattr(session_mod.time, "time", lambda: now + session_mod.LIFETIME_SECONDS + 1)
    assert s.viewer(cookie) is None


def test_svg_escapes_labels_and_links_only_own_nodes() -> None:
    g = Graph("ami-0123456789abcdef0")
    g.add(Node("ami-0123456789abcdef0", "image", "ami-0123456789abcdef0 <script>x</script>'", "111111111111"))
    g.add(Node("arn:aws:kms:us-east-1:2:key/k", "kmskey", "k", "222222222222", "PendingDeletion", foreign=True))
    g.link("ami-0123456789abcdef0", "arn:aws:kms:us-east-1:2:key/k", "uses")
    svg = render(g, lambda n: None if n.foreign else f"/_console/r/{n.id}")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count("<a ") == 1 and 'class="node node-kmskey key-pending foreign"' in svg
    assert 'class="edge"' in svg
