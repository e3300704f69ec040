"""Where a Describe listing's server time goes: py-spy (``--gil``, raw collapsed stacks)
samples ``ebscrypt serve`` while a client pages Describe* over a data directory filled by
bench_describe_scale.fill, as the CLI pages (issue 15, Describe at scale).

    python bench/profile_describe.py DATA_DIR KIND OUT.raw [--seconds 10] [--tree DIR] [--filtered]

DATA_DIR is used as is (pass a copy); the server is ready and warmed up before sampling
starts, so start-up is not in the profile. ``--filtered``: the kms-key-id (images:
name=prefix*) filter instead of the pages. Summarize OUT.raw with bench/profile.py's
``summarize`` (inclusive and self shares).
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_describe_scale import ACCOUNT, KINDS  # noqa: E402
from bench.common import RawCall, sign_requests, start_ebscrypt  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("out", type=Path)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--tree", type=Path)
    p.add_argument("--filtered", action="store_true")
    args = p.parse_args()
    method_name, item_tag, owner, second = KINDS[args.kind]
    srv = start_ebscrypt(args.data, tree=args.tree)
    assert srv.proc is not None
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)

    def call(params: dict[str, object]) -> bytes:
        method, path, body, headers = sign_requests(srv.url, RawCall("ec2", method_name, params, ACCOUNT), 1)[0]
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        assert resp.status == 200, text[:300]
        return text

    try:
        call(dict(owner, MaxResults=5))  # warm
        spy = subprocess.Popen(["py-spy", "record", "--gil", "-r", "200", "-d", str(args.seconds), "-f", "raw",
                                "-o", str(args.out), "-p", str(srv.proc.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        token, requests = None, 0
        while spy.poll() is None:
            if args.filtered:
                call(dict(owner, Filters=[second]))
            else:
                text = call(dict(owner, MaxResults=1000, **({"NextToken": token} if token else {})))
                token = (text.split(b"<nextToken>")[1].split(b"</nextToken>")[0].decode()
                         if b"<nextToken>" in text else None)
            requests += 1
        print(f"{args.kind}: {requests} requests sampled -> {args.out}")
    finally:
        conn.close()
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
