"""The ``ebscrypt`` command: ``serve``, ``keystore``, ``audit-log``, ``upload``, ``download``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Sequence

from ebscrypt import __version__
from ebscrypt.context import Settings


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
    serve.add_argument("--key-store", default=None, metavar="URI",
                       help="root of trust: file:PATH (default: <data-dir>/root.key; "
                            "?passphrase-env=VAR or ?passphrase-file=PATH) or a PKCS#11 URI "
                            "pkcs11:token=…;object=…?module-path=…&pin-source=file:…")
    serve.set_defaults(func=_serve)

    _add_keystore_commands(commands)

    audit = commands.add_parser("audit-log", help="print the KMS audit trail (CloudTrail JSON lines)")
    audit.add_argument("--data-dir", type=Path, default=Path(".ebscrypt"))
    audit.set_defaults(func=_audit_log)

    for name in ("upload", "download"):
        sub = commands.add_parser(name, help=f"{name} a disk image through the EBS direct APIs", add_help=False)
        sub.set_defaults(func=_datapath, datapath=name)

    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("upload", "download"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args, rest) or 0)


def _add_keystore_commands(commands: Any) -> None:
    """``ebscrypt keystore …`` (engines/kms/keystore_admin.py, imported only when run)."""
    ks = commands.add_parser("keystore", help="manage the root of trust (file or PKCS#11 key store)")
    sub = ks.add_subparsers(dest="keystore_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, default=Path(".ebscrypt"))
        p.add_argument("--db", default=None, help="SQLAlchemy database URL (default: SQLite file in the data dir)")
        p.add_argument("--key-store", default=None, metavar="URI",
                       help="the current key store (default: file:<data-dir>/root.key)")

    p = sub.add_parser("init", help="create the root key (inside the token for pkcs11:); idempotent")
    common(p)
    p.set_defaults(func=_keystore, keystore_command="init")
    p = sub.add_parser("status", help="which key store and root key; can it unwrap this database's keys")
    common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_keystore, keystore_command="status")
    p = sub.add_parser("migrate", help="re-wrap every KMS key's material under another key store")
    common(p)
    p.add_argument("--to", required=True, metavar="URI", help="the new key store (file:PATH… or pkcs11:…)")
    p.add_argument("--pause", type=float, default=0.0, metavar="SECONDS",
                   help="wait between rows (to spare a shared HSM)")
    p.set_defaults(func=_keystore, keystore_command="migrate")
    p = sub.add_parser("rotate", help="new root key in the token, every row re-wrapped, old root retired")
    common(p)
    p.add_argument("--pause", type=float, default=0.0, metavar="SECONDS")
    p.set_defaults(func=_keystore, keystore_command="rotate")


def _key_store_name(uri: str | None, data_dir: Path) -> str:
    """The key store as printed at start: no query (a pin-value stays off the console)."""
    return (uri or f"file:{data_dir.resolve() / 'root.key'}").split("?")[0]


def _keystore(args: argparse.Namespace, rest: list[str]) -> int:
    from ebscrypt.engines.kms import keystore_admin

    return int(getattr(keystore_admin, f"cmd_{args.keystore_command}")(args, rest))


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
        key_store=args.key_store,
    )
    # The key store is checked before serving: a missing token, a wrong PIN or passphrase,
    # a readable root key file, or a database wrapped by another store is a clear message
    # and a non-zero exit here (uvicorn would log a lifespan traceback and exit 0/3).
    from ebscrypt.engines.kms.keystore_admin import preflight

    problem = preflight(settings)
    if problem:
        print(f"ebscrypt: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoint = f"http://{args.host}:{args.port}"
    print(f"ebscrypt {__version__} serving on {endpoint} (auth: {auth}, data: {args.data_dir.resolve()})")
    print(f"key store: {_key_store_name(args.key_store, args.data_dir)}")
    print(f"try:  aws --endpoint-url {endpoint} ec2 describe-regions")
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
