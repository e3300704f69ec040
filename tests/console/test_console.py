"""The web console in a real browser: headless Chromium from Debian driven by Playwright's
Python package (``executable_path=/usr/bin/chromium``; ci/install-console.sh installs
both). Browser tests skip, with the reason, when either is missing; the HTTP-level checks
(sign-in rules, cross-site refusal, another account's pages) always run.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import ServerProcess
from tests.console.scenario import Scenario, build
from tests.helpers import new_account

CHROMIUM = os.environ.get("EBSCRYPT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _browser_missing() -> str | None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"chromium not found at {CHROMIUM} (bash ci/install-console.sh installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (bash ci/install-console.sh installs it)"
    return None


@pytest.fixture(scope="module")
def scenario(server: ServerProcess) -> Scenario:
    return build(server.client, new_account(), new_account())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def signed_in(browser: Any, server: ServerProcess) -> Iterator[Callable[[str], Any]]:
    contexts: list[Any] = []

    def as_account(account: str) -> Any:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{server.url}/_console/")
        assert page.url.endswith("/_console/login")  # not signed in: sent to sign in
        page.fill("#account", account)
        page.click("button[type=submit]")
        assert page.locator("#account").inner_text() == account
        return page

    yield as_account
    for context in contexts:
        context.close()


# ----------------------------------------------------------------------------- in the browser


def test_pages_list_what_the_api_created(signed_in: Callable[[str], Any], server: ServerProcess,
                                         scenario: Scenario) -> None:
    page = signed_in(scenario.a)
    page.click("text=Volumes")
    listed = page.locator("#list-volumes tbody th").all_inner_texts()
    assert scenario.volume in listed and scenario.plain_volume in listed
    row = page.locator("#list-volumes tbody tr", has_text=scenario.plain_volume)
    assert "unencrypted" in row.inner_text()
    page.click("nav >> text=Keys")
    keys = page.locator("#list-keys tbody").inner_text()
    assert scenario.key_a in keys and "alias/golden" in keys and "PendingDeletion" in keys
    page.click("nav >> text=Images")
    assert "golden-1" in page.locator("#list-images tbody").inner_text()
    page.click("nav >> text=Overview")
    overview = page.locator("main").inner_text()
    assert "KEY_PENDING_DELETION" in overview and "UNENCRYPTED_VOLUME" in overview
    # the audit trail of one volume: the data key EC2 generated for it on the caller's behalf
    page.goto(f"{server.url}/_console/r/{scenario.volume}")
    page.click("text=Audit trail of this volume")
    trail = page.locator("table.audit tbody").inner_text()
    assert "GenerateDataKeyWithoutPlaintext" in trail and "ec2.amazonaws.com" in trail
    assert "CreateKey" not in trail  # not about this volume


def test_lineage_of_a_reencrypted_cross_account_copy_shows_both_keys(signed_in: Callable[[str], Any],
                                                                     server: ServerProcess,
                                                                     scenario: Scenario) -> None:
    page = signed_in(scenario.b)
    page.goto(f"{server.url}/_console/r/{scenario.copy_image}")
    page.click(f"main >> a[href='/_console/r/{scenario.copy_snapshot}'] >> nth=0")
    keys = page.locator("svg.lineage [data-kind=kmskey]")
    ids = {keys.nth(i).get_attribute("data-id") for i in range(keys.count())}
    assert ids == {scenario.key_a_arn, scenario.key_b_arn}
    # B's key is B's (a link to its page); A's key is shown, dashed, and not a link
    assert page.locator(f"svg.lineage a[data-id='{scenario.key_b_arn}']").count() == 1
    foreign = page.locator(f"svg.lineage g.foreign[data-id='{scenario.key_a_arn}']")
    assert foreign.count() == 1 and foreign.get_attribute("data-state") == "Enabled"
    assert "R-OUT-2" in page.locator("dl.explain").first.inner_text()


def test_clicking_a_key_shows_its_dependants(signed_in: Callable[[str], Any], server: ServerProcess,
                                             scenario: Scenario) -> None:
    page = signed_in(scenario.a)
    page.goto(f"{server.url}/_console/r/{scenario.image}")
    # B's re-encrypted copy of A's snapshot is B's: not in A's lineage, nor B's key
    assert page.locator(f"svg.lineage [data-id='{scenario.copy_snapshot}']").count() == 0
    assert page.locator(f"svg.lineage [data-id='{scenario.key_b_arn}']").count() == 0
    page.click(f"svg.lineage a[data-id='{scenario.key_a_arn}']")
    assert page.url.endswith(f"/_console/key/{scenario.key_a}")
    assert page.locator("#key-state").inner_text() == "Enabled"
    assert scenario.volume in page.locator("#dependants-volumes").inner_text()
    assert scenario.snapshot in page.locator("#dependants-snapshots").inner_text()
    assert scenario.image in page.locator("#dependants-images").inner_text()
    # the key pending deletion: coloured by its state, its snapshot listed
    page.goto(f"{server.url}/_console/key/{scenario.doomed_key}")
    assert page.locator("#key-state").inner_text() == "PendingDeletion"
    assert scenario.doomed_snapshot in page.locator("#dependants-snapshots").inner_text()
    node = page.locator("svg.lineage [data-kind=kmskey].key-pending")
    assert node.count() == 1
    page.click("text=Audit trail of this key")
    assert "ScheduleKeyDeletion" in page.locator("table.audit").inner_text()


def test_another_accounts_resources_are_refused(signed_in: Callable[[str], Any], server: ServerProcess,
                                                scenario: Scenario) -> None:
    page = signed_in(scenario.b)
    for path in (f"/_console/r/{scenario.plain_volume}", f"/_console/r/{scenario.image}",
                 f"/_console/key/{scenario.key_a}"):
        response = page.goto(server.url + path)
        assert response.status == 404, path
        assert "does not exist in your account" in page.locator("main").inner_text()
    page.goto(f"{server.url}/_console/list/volumes")
    assert scenario.volume not in page.locator("main").inner_text()


# ----------------------------------------------------------------------------- HTTP rules


def _request(server: ServerProcess, method: str, path: str, headers: dict[str, str] | None = None,
             body: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    return response


def _sign_in(server: ServerProcess, form: dict[str, str]) -> http.client.HTTPResponse:
    return _request(server, "POST", "/_console/login", {
        "Content-Type": "application/x-www-form-urlencoded", "Origin": server.url,
        "Host": f"127.0.0.1:{server.port}"}, urllib.parse.urlencode(form))


def test_sign_in_cookie_and_cross_site_refusal(server: ServerProcess, scenario: Scenario) -> None:
    ok = _sign_in(server, {"account": scenario.a})
    assert ok.status == 303
    cookie = ok.getheader("set-cookie") or ""
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/_console" in cookie
    session = cookie.split(";", 1)[0]
    page = _request(server, "GET", "/_console/", {"Cookie": session})
    assert page.status == 200 and page.getheader("access-control-allow-origin") is None
    assert "frame-ancestors 'none'" in (page.getheader("content-security-policy") or "")
    assert _request(server, "GET", "/_console/", {"Cookie": session, "Sec-Fetch-Site": "cross-site"}).status == 403
    # a form posted from another site (or with no origin) is refused
    forged = _request(server, "POST", "/_console/login", {"Content-Type": "application/x-www-form-urlencoded",
                                                          "Origin": "http://evil.example"}, "account=" + scenario.a)
    assert forged.status == 403
    assert _sign_in(server, {"account": "not-an-account"}).status == 401
    tampered = session[:-1] + ("0" if session[-1] != "0" else "1")
    assert _request(server, "GET", "/_console/", {"Cookie": tampered}).status == 303  # back to sign-in


def test_strict_mode_signs_in_with_an_access_key(server_factory: Callable[..., ServerProcess],
                                                 tmp_path: Path) -> None:
    creds = tmp_path / "creds.toml"
    creds.write_text('[alice]\naws_access_key_id = "AKIAEXAMPLEALICE0001"\n'
                     'aws_secret_access_key = "alice-secret"\naccount_id = "123456789012"\n')
    srv = server_factory(["--auth", "strict", "--credentials", str(creds)])
    assert _sign_in(srv, {"account": "123456789012"}).status == 401  # an account id alone is not enough
    assert _sign_in(srv, {"access_key_id": "AKIAEXAMPLEALICE0001", "secret_access_key": "wrong"}).status == 401
    ok = _sign_in(srv, {"access_key_id": "AKIAEXAMPLEALICE0001", "secret_access_key": "alice-secret"})
    assert ok.status == 303
    session = (ok.getheader("set-cookie") or "").split(";", 1)[0]
    assert "alice-secret" not in session
    page = _request(srv, "GET", "/_console/list/volumes", {"Cookie": session})
    assert page.status == 200


def test_no_console_flag(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory(["--no-console"])
    response = _request(srv, "GET", "/_console/")
    assert response.status != 200 and response.getheader("set-cookie") is None
    assert "xml" in (response.getheader("content-type") or "")  # the API's error envelope, not a page
