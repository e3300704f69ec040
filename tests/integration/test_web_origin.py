"""Dev mode is not reachable from a web page (issue 10, item 3).

A page in the user's browser can make GETs (``<img>``), form POSTs, and — through DNS
rebinding — requests with its own ``Host``. Each is refused with 403 in the service's
error envelope and changes nothing; SDK-style requests (no ``Origin``, no
``Sec-Fetch-*``) and a page whose origin is listed with ``--cors-origin`` keep working.
"""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import ServerProcess, make_client

TRUSTED = "https://console.example"
ACCOUNT = "000000000000"  # unsigned requests act as the default account
IMG_URL = "/?Action=EnableEbsEncryptionByDefault&Version=2016-11-15"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("origin")
    server = ServerProcess(root / "data", ["--cors-origin", TRUSTED, "--allowed-host", "ebscrypt.internal"]).start()
    yield server
    server.stop()


def _ebd(srv: ServerProcess) -> bool:
    return make_client(srv.url, "ec2", ACCOUNT).get_ebs_encryption_by_default()["EbsEncryptionByDefault"]


def _ec2_code(resp: httpx.Response) -> str:
    return resp.text.split("<Code>")[1].split("</Code>")[0]


@pytest.mark.parametrize(
    "headers",
    [
        # <img src=...> on another site: no Origin, but Sec-Fetch-Site says where it comes from.
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
        # another site on the same machine (http://127.0.0.1:8080): same-site, not same-origin.
        {"Sec-Fetch-Site": "same-site"},
        # DNS rebinding: the page's own name, resolving to 127.0.0.1.
        {"Host": "attacker.example:4566"},
        # a page that sends Origin on a GET (fetch in no-cors mode).
        {"Origin": "https://attacker.example"},
        # an <img> in a browser without fetch metadata: only its Referer tells.
        {"Referer": "https://attacker.example/page.html"},
    ],
    ids=["img-cross-site", "same-site", "dns-rebinding", "foreign-origin", "old-browser-img"],
)
def test_browser_get_is_refused_and_changes_nothing(srv: ServerProcess, headers: dict[str, str]) -> None:
    assert _ebd(srv) is False
    resp = httpx.get(srv.url + IMG_URL, headers=headers)
    assert resp.status_code == 403, resp.text
    assert _ec2_code(resp) == "UnauthorizedOperation"
    assert "<RequestID>" in resp.text
    assert _ebd(srv) is False


def test_form_post_from_another_site_is_refused(srv: ServerProcess) -> None:
    ec2 = make_client(srv.url, "ec2", ACCOUNT)
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    resp = httpx.post(
        srv.url + "/",
        data={"Action": "DeleteVolume", "Version": "2016-11-15", "VolumeId": vol},
        headers={"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert resp.status_code == 403 and _ec2_code(resp) == "UnauthorizedOperation"
    assert ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["State"] != "deleted"


def test_kms_and_ebs_refusals_use_their_own_envelope(srv: ServerProcess) -> None:
    kms = httpx.post(srv.url + "/", content="{}", headers={
        "X-Amz-Target": "TrentService.CreateKey", "Content-Type": "application/x-amz-json-1.1",
        "Host": "rebound.attacker.example"})
    assert kms.status_code == 403 and kms.json()["__type"].endswith("AccessDeniedException")
    ebs = httpx.post(srv.url + "/snapshots", json={"VolumeSize": 1}, headers={"Origin": "null"})
    assert ebs.status_code == 403 and ebs.headers["x-amzn-ErrorType"].startswith("AccessDeniedException")


def test_other_routes_are_guarded_too(srv: ServerProcess) -> None:
    resp = httpx.post(srv.url + "/_ebscrypt/clock/advance?seconds=1", headers={"Sec-Fetch-Site": "cross-site"})
    assert resp.status_code == 403


def test_sdk_style_requests_and_allowed_names_work(srv: ServerProcess) -> None:
    assert make_client(srv.url, "sts").get_caller_identity()["Account"]
    for host in ("localhost", f"localhost:{srv.port}", "[::1]:80", "ebscrypt.internal:443", "EBSCRYPT.internal"):
        resp = httpx.get(srv.url + "/?Action=DescribeRegions&Version=2016-11-15", headers={"Host": host})
        assert resp.status_code == 200, (host, resp.text)
    # A navigation the user typed (Sec-Fetch-Site: none) and the server's own origin are fine.
    assert httpx.get(srv.url + "/?Action=DescribeRegions&Version=2016-11-15",
                     headers={"Sec-Fetch-Site": "none"}).status_code == 200
    assert httpx.post(srv.url + "/", data={"Action": "DescribeRegions", "Version": "2016-11-15"},
                      headers={"Origin": srv.url, "Sec-Fetch-Site": "same-origin"}).status_code == 200


def test_trusted_origin_gets_cors(srv: ServerProcess) -> None:
    pre = httpx.options(srv.url + "/", headers={
        "Origin": TRUSTED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-amz-date,x-amz-target"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == TRUSTED
    assert "x-amz-target" in pre.headers["access-control-allow-headers"]
    assert "POST" in pre.headers["access-control-allow-methods"]
    resp = httpx.post(srv.url + "/", content="{}", headers={
        "Origin": TRUSTED, "Sec-Fetch-Site": "cross-site", "X-Amz-Target": "TrentService.ListKeys",
        "Content-Type": "application/x-amz-json-1.1"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == TRUSTED
    assert "x-amzn-RequestId" in resp.headers["access-control-expose-headers"]
    assert "Keys" in resp.json()


def test_untrusted_preflight_is_refused(srv: ServerProcess) -> None:
    pre = httpx.options(srv.url + "/", headers={"Origin": "https://attacker.example",
                                                "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 403
    assert "access-control-allow-origin" not in pre.headers


def test_a_state_changing_img_get_does_not_run(srv: ServerProcess) -> None:
    """The issue's own example: an <img> that disables encryption by default."""
    ec2: Any = make_client(srv.url, "ec2", ACCOUNT)
    ec2.enable_ebs_encryption_by_default()
    try:
        resp = httpx.get(srv.url + "/?Action=DisableEbsEncryptionByDefault&Version=2016-11-15",
                         headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "image"})
        assert resp.status_code == 403
        assert _ebd(srv) is True
    finally:
        ec2.disable_ebs_encryption_by_default()
