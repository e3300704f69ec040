"""Where a Describe listing's server CPU goes by thread: the event loop's (SigV4, parsing,
the response's write to the socket) and the worker threads' (handler + XML), per 1,000
items and per request, from /proc/<pid>/task/*/stat while a server is paged through as the
CLI pages (issue 15: is the request's own cost outside the handler the body's write?).

    python bench/describe_threads.py DATA_DIR KIND [--seconds 8] [--tree DIR]

DATA_DIR: a stopped server's data directory filled by bench_describe_scale.fill (it is used
as is: pass a copy); KIND: snapshots, volumes or images; --tree: another checkout's root.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_describe_scale import ACCOUNT, KINDS  # noqa: E402
from bench.common import RawCall, sign_requests, start_ebscrypt, thread_cpu  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--tree", type=Path)
    args = p.parse_args()
    method_name, item_tag, owner, _ = KINDS[args.kind]
    srv = start_ebscrypt(args.data, tree=args.tree)
    assert srv.proc is not None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
        token, items, requests = None, 0, 0
        before = thread_cpu(srv.proc.pid)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            params = dict(owner, MaxResults=1000, **({"NextToken": token} if token else {}))
            method, path, body, headers = sign_requests(srv.url, RawCall("ec2", method_name, params, ACCOUNT), 1)[0]
            conn.request(method, path, body=body, headers=headers)
            text = conn.getresponse().read()
            requests += 1
            items += text.count(item_tag)
            token = (text.split(b"<nextToken>")[1].split(b"</nextToken>")[0].decode()
                     if b"<nextToken>" in text else None)
        after = thread_cpu(srv.proc.pid)
        loop = (after[srv.proc.pid] - before.get(srv.proc.pid, 0.0)) * 1000  # the main thread runs the loop
        total = sum(after[t] - before.get(t, 0.0) for t in after) * 1000
        per = items / 1000
        print(f"{args.kind} ({args.tree or 'this tree'}): CPU ms per 1,000 items {total / per:.2f} "
              f"(event loop {loop / per:.2f}, workers {(total - loop) / per:.2f}); per request: event loop "
              f"{loop / requests:.2f} ms, workers {(total - loop) / requests:.2f} ms; {requests} requests")
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
