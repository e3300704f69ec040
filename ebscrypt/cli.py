"""The ``ebscrypt`` command: ``serve``, ``audit-log``, ``explain``, ``report``, ``upload``, ``download``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ebscrypt import __version__
from ebscrypt.context import Settings

if TYPE_CHECKING:
    from ebscrypt.storage.readonly import ReadOnlyDatabase


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ebscrypt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ebscrypt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the AWS-compatible endpoint")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4566)
    serve.add_argument("--data-dir", type=Path, default=Path(".ebscrypt"))
    serve.add_argument("--db", default=None, help="SQLAlchemy database URL (default: SQLite file in the data dir)")
    serve.add_argument("--auth", choices=["dev", "strict"], default=None,
                       help="dev (default on loopback): no signature check; strict: verify SigV4")
    serve.add_argument("--credentials", type=Path, default=None, help="credentials file for --auth strict")
    serve.add_argument("--default-account", default="000000000000")
    serve.add_argument("--log-level", default="warning")
    serve.add_argument("--no-console", dest="console", action="store_false",
                       help="do not serve the read-only web console at /_console/")
    serve.set_defaults(func=_serve)

    audit = commands.add_parser("audit-log", help="print the KMS audit trail (CloudTrail JSON lines)")
    audit.add_argument("--data-dir", type=Path, default=Path(".ebscrypt"))
    audit.set_defaults(func=_audit_log)

    # explain/report read the metadata database directly, read-only (storage/readonly.py):
    # they work with or without a running server and need no credentials of an account.
    explain = commands.add_parser("explain", help="why a volume/snapshot/image/instance has its encryption")
    explain.add_argument("resource_id")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    _database_args(explain)
    explain.set_defaults(func=_explain)

    report = commands.add_parser("report", help="the encryption posture of one account or all")
    report.add_argument("--account", default=None, type=_account_id, help="only this 12-digit account (default: all)")
    report.add_argument("--format", choices=["table", "json", "csv"], default="table")
    report.add_argument("--fail-on", choices=list(_severities()), default=None,
                        help="exit with status 1 when a finding of this severity or above exists")
    _database_args(report)
    report.set_defaults(func=_report)

    for name in ("upload", "download"):
        sub = commands.add_parser(name, help=f"{name} a disk image through the EBS direct APIs", add_help=False)
        sub.set_defaults(func=_datapath, datapath=name)

    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("upload", "download"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args, rest) or 0)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except (OSError, ValueError):
            return False


def _serve(args: argparse.Namespace, _rest: list[str]) -> int:
    import uvicorn

    from ebscrypt.app import build_app

    loopback = _is_loopback(args.host)
    auth = args.auth or ("dev" if loopback else "strict")
    if auth == "dev" and not loopback:
        print("ebscrypt: --auth dev is only allowed on a loopback address; use --auth strict", file=sys.stderr)
        return 2
    if auth == "strict" and args.credentials is None:
        print("ebscrypt: --auth strict needs --credentials FILE", file=sys.stderr)
        return 2
    settings = Settings(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        db_url=args.db,
        auth=auth,
        default_account=args.default_account,
        credentials_file=args.credentials,
        console=args.console,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoint = f"http://{args.host}:{args.port}"
    print(f"ebscrypt {__version__} serving on {endpoint} (auth: {auth}, data: {args.data_dir.resolve()})")
    print(f"try:  aws --endpoint-url {endpoint} ec2 describe-regions")
    if args.console:
        print(f"console: {endpoint}/_console/")
    sys.stdout.flush()
    # uvicorn catches SIGINT/SIGTERM: it stops accepting, finishes requests, runs the
    # lifespan shutdown (job workers stopped, database closed), then re-raises the signal
    # to the handlers below, so a requested stop exits with status 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(build_app(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    except (KeyboardInterrupt, SystemExit):
        pass
    print("ebscrypt stopped")
    return 0


def _audit_log(args: argparse.Namespace, _rest: list[str]) -> int:
    from ebscrypt.engines.kms.audit import print_log

    print_log(args.data_dir)
    return 0


def _datapath(args: argparse.Namespace, rest: list[str]) -> int:
    from ebscrypt import datapath

    entry = datapath.upload_main if args.datapath == "upload" else datapath.download_main
    return int(entry(rest) or 0)


def _account_id(value: str) -> str:
    if len(value) != 12 or not value.isdigit():
        raise argparse.ArgumentTypeError(f"an account id is 12 digits, not {value!r}")
    return value


def _severities() -> tuple[str, ...]:
    from ebscrypt.engines.insight.records import SEVERITIES

    return SEVERITIES


def _database_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--data-dir", type=Path, default=Path(".ebscrypt"))
    sub.add_argument("--db", default=None, help="SQLAlchemy database URL (default: SQLite file in the data dir)")


def _open_db(args: argparse.Namespace) -> "ReadOnlyDatabase | None":
    from ebscrypt.storage.readonly import open_read_only

    try:
        return open_read_only(args.data_dir, args.db)
    except FileNotFoundError as err:
        print(f"ebscrypt: {err}", file=sys.stderr)
        return None


def _explain(args: argparse.Namespace, _rest: list[str]) -> int:
    import json

    from ebscrypt.engines.insight.explain import explain, render_text
    from ebscrypt.errors import ServiceError

    db = _open_db(args)
    if db is None:
        return 2
    try:
        with db.read() as conn:
            result = explain(conn, args.resource_id)
    except ServiceError as err:
        print(f"ebscrypt: {err.message}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(json.dumps(result.as_dict(), indent=2) if args.json else render_text(result))
    return 0


def _report(args: argparse.Namespace, _rest: list[str]) -> int:
    from ebscrypt.engines.insight.posture import at_or_above, report
    from ebscrypt.engines.insight.render import findings_csv, findings_json, findings_table, terminal_width

    db = _open_db(args)
    if db is None:
        return 2
    try:
        with db.read() as conn:
            findings = report(conn, args.account)
    finally:
        db.dispose()
    if args.format == "table":
        sys.stdout.write(findings_table(findings, width=terminal_width()))
    else:
        sys.stdout.write((findings_json if args.format == "json" else findings_csv)(findings))
    if args.fail_on and at_or_above(findings, args.fail_on):
        return 1
    return 0
