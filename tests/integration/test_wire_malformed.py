"""The malformed-request table of tests/unit/test_codec_malformed.py, over real HTTP (R-WIRE).

Same requests, same expected codes, but sent to a running server: proves the gateway
hands the codec the raw path, query and body unchanged and renders its errors as they are.
"""

from __future__ import annotations

import botocore.parsers
import httpx
import pytest
from botocore.awsrequest import HeadersDict

from ebscrypt.wire.codec import codec_for
from tests.unit.test_codec_malformed import CASES, Case


def _auth(service: str) -> str:
    # Dev auth does not verify signatures; the scope still names account, region, service.
    return (f"AWS4-HMAC-SHA256 Credential=111111111111/20260101/us-east-1/{service}/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=00")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_request_over_http(endpoint: str, case: Case) -> None:
    req = case.request
    headers = {**req.headers, "authorization": _auth(case.service)}
    url = endpoint + req.path + (f"?{req.query}" if req.query else "")
    resp = httpx.request(req.method, url, content=req.body, headers=headers, timeout=30)
    assert resp.status_code == case.status, resp.text
    parsed_headers = HeadersDict()
    for k, v in resp.headers.items():
        parsed_headers[k] = v
    parser = botocore.parsers.create_parser(codec_for(case.service).service_model.protocol)
    err = parser.parse({"status_code": resp.status_code, "headers": parsed_headers, "body": resp.content}, None)
    assert err["Error"]["Code"] == case.code
    assert case.message in err["Error"]["Message"]
    assert err["ResponseMetadata"].get("RequestId")
