"""The ``ebscrypt`` command: ``serve``, ``keystore``, ``audit-log``, ``explain``, ``report``, ``upload``, ``download``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from ebscrypt import __version__
from ebscrypt.context import Settings

if TYPE_CHECKING:
    from ebscrypt.storage.readonly import ReadOnlyDatabase


DESCRIPTION = (
    "ebscrypt: a self-hostable, AWS-compatible EC2/EBS/KMS endpoint with encrypted block storage. "
    "Commands: serve (run the endpoint), keystore (the root of trust), audit-log (print the KMS audit "
    "trail), explain / report (why a resource has its key; the encryption posture), "
    "upload / download (move disk images through the EBS direct APIs)."
)
_ACCOUNT_RE = re.compile(r"^\d{12}$")
T = TypeVar("T")


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, [], False):
            return action.help
        return super()._get_help_string(action)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("upload", "download"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args, rest) or 0)


def _parser() -> argparse.ArgumentParser:
    """The ``ebscrypt`` command line: every command and its options."""
    parser = argparse.ArgumentParser(prog="ebscrypt", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ebscrypt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve_command(commands)
    _add_keystore_commands(commands)
    _add_tool_commands(commands)
    return parser


# Bounds of the worker counts: more threads or processes than this only queue on the
# database and the cores (and a typo such as 1000 would start a thousand processes).
MAX_WORKERS = 64
MIN_NBD_CACHE_MIB = 2


def _add_serve_command(commands: Any) -> None:
    """``ebscrypt serve`` and its options (each a ``Settings`` field, see ``_settings``)."""
    serve = commands.add_parser("serve", help="run the AWS-compatible endpoint",
                                description="Run the AWS-compatible EC2/EBS/KMS endpoint.",
                                formatter_class=_Defaults)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (a non-loopback address needs --auth strict)")
    serve.add_argument("--port", type=int, default=4566, help="TCP port to listen on")
    serve.add_argument("--data-dir", type=Path, default=Path(".ebscrypt"),
                       help="directory of the metadata, blocks, root key and audit trail")
    serve.add_argument("--db", default=None, help="SQLAlchemy database URL (default: SQLite file in the data dir)")
    serve.add_argument("--auth", choices=["dev", "strict"], default=None,
                       help="dev (default on loopback): no signature check; strict: verify SigV4")
    serve.add_argument("--credentials", type=Path, default=None, help="credentials file for --auth strict")
    serve.add_argument("--default-account", default="000000000000",
                       help="dev auth: the account of requests whose access key id is not 12 digits")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error", "critical"],
                       type=str.lower, help="server log level")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a Host name to serve besides the loopback names and --host "
                            "(a load balancer's or DNS name; repeatable; '*' for any)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="a browser origin (https://app.example) allowed to call the service with CORS "
                            "(repeatable); requests from any other web page are refused")
    serve.add_argument("--key-store", default=None, metavar="URI",
                       help="root of trust: file:PATH (default: <data-dir>/root.key; "
                            "?passphrase-env=VAR or ?passphrase-file=PATH) or a PKCS#11 URI "
                            "pkcs11:token=…;object=…?module-path=…&pin-source=file:…")
    serve.add_argument("--no-console", dest="console", action="store_false",
                       help="do not serve the read-only web console at /_console/")
    serve.add_argument("--nbd-port", type=int, default=10809,
                       help="NBD server for attached volumes (export name = volume id); 0 disables")
    serve.add_argument("--nbd-host", default="127.0.0.1",
                       help="NBD listen address (a non-loopback one needs --nbd-tls-cert/--nbd-tls-key)")
    serve.add_argument("--nbd-tls-cert", type=Path, default=None, help="PEM certificate: NBD requires TLS")
    serve.add_argument("--nbd-tls-key", type=Path, default=None, help="PEM private key for --nbd-tls-cert")
    serve.add_argument("--nbd-cache-mib", type=int, default=128,
                       help="memory cache per attached volume (decrypted and not yet flushed blocks), MiB, "
                            "at least 2 (default: 128)")
    serve.add_argument("--blocks", default=None, metavar="s3://BUCKET[/PREFIX] | DIR",
                       help="block objects in an S3-compatible store (credentials from boto3's usual "
                            "chain or --s3-profile), or in a directory (default: the data dir's blocks/)")
    serve.add_argument("--s3-endpoint-url", default=None, metavar="URL",
                       help="the S3 endpoint of --blocks (e.g. a Ceph RADOS Gateway)")
    serve.add_argument("--s3-profile", default=None, help="the AWS profile whose credentials reach --blocks")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help=f"API processes sharing the port, the data dir and the database, 1 to {MAX_WORKERS} "
                            f"(one Python process uses about one core; worker 0 also serves NBD)")
    serve.add_argument("--job-workers", type=int, default=Settings.job_workers, metavar="N",
                       help=f"threads that run background jobs (copies, volume creation, deletions), "
                            f"1 to {MAX_WORKERS}")
    serve.add_argument("--block-workers", type=int, default=Settings.block_workers, metavar="N",
                       help=f"worker processes of the block engine's re-encrypting copies, 0 to {MAX_WORKERS} "
                            f"(0: copies run in the server process)")
    serve.add_argument("--root-key-file", type=Path, default=None, metavar="PATH",
                       help="the KMS root key file, the same as --key-store file:PATH (default: the data "
                            "dir's root.key); every host sharing a --db is given the same file")
    # uvicorn's HTTP parser and event loop; "auto" takes httptools / uvloop (dependencies
    # of the package: a cheaper request path, bench/README.md section A), else h11 / asyncio
    # (a platform without their wheels); h11 / asyncio can be chosen by name.
    serve.add_argument("--http", choices=["auto", "h11", "httptools"], default="auto",
                       help="HTTP implementation (default auto: httptools, h11 if it is not installed)")
    serve.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                       help="event loop (default auto: uvloop, asyncio if it is not installed)")
    serve.set_defaults(func=_serve)


def _add_tool_commands(commands: Any) -> None:
    """The commands besides ``serve`` and ``keystore``: audit-log, explain, report, upload, download."""
    audit = commands.add_parser("audit-log", help="print the KMS audit trail (CloudTrail JSON lines)",
                                description="Print the KMS audit trail (CloudTrail JSON lines).",
                                formatter_class=_Defaults)
    audit.add_argument("--data-dir", type=Path, default=Path(".ebscrypt"), help="the server's data directory")
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
    loopback = _is_loopback(args.host)
    auth = args.auth or ("dev" if loopback else "strict")
    problem = _serve_args_problem(args, auth, loopback)
    if problem:
        return _fail(problem, 2)
    if args.root_key_file is not None:
        args.key_store = f"file:{args.root_key_file.resolve()}"
    # Listen before announcing anything: a port already taken is an error, not a server
    # that says "serving on" and then exits.
    sock_or_problem = _bind(args)
    if isinstance(sock_or_problem, str):
        return _fail(sock_or_problem)
    if args.port == 0:  # the port the system chose: what the banner and the settings name
        args.port = sock_or_problem.getsockname()[1]
    settings = _settings(args, auth)
    # The key store is checked before serving: a missing token, a wrong PIN or passphrase,
    # a readable root key file, or a database wrapped by another store is a clear message
    # and a non-zero exit here (uvicorn would log a lifespan traceback and exit 0/3).
    from ebscrypt.engines.kms.keystore_admin import preflight

    problem = preflight(settings)
    if problem:
        print(f"ebscrypt: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _announce(args, auth)
    if args.workers > 1:
        return _run_workers(args, settings, sock_or_problem)
    return _run(args, settings, sock_or_problem)


def _run_workers(args: argparse.Namespace, settings: Settings, sock: socket.socket) -> int:
    """``--workers N``: N forked API processes on ``sock``, supervised (ebscrypt/supervisor.py)."""
    import dataclasses
    import secrets

    from ebscrypt.clock import SharedOffset
    from ebscrypt.engines.attach.engine import ensure_export_key
    from ebscrypt.supervisor import Supervisor

    # What every worker must share, made once before they fork: the clock offset, the
    # primary's attach socket name, the dev console's cookie key, the NBD export key (the database and the root key
    # were made by the preflight already).
    settings = dataclasses.replace(settings, workers=args.workers, clock_offset=SharedOffset(),
                                   console_key=secrets.token_bytes(32),
                                   attach_address=f"ebscrypt-attach-{os.getpid()}-{secrets.token_hex(8)}")
    ensure_export_key(settings.data_dir)
    print(f"workers: {args.workers} processes (worker 0 serves NBD and runs the block store's sweeps)")
    sys.stdout.flush()
    supervisor = Supervisor(args.workers, lambda index: _run(
        args, dataclasses.replace(settings, worker_index=index), sock, quiet=True))
    status = supervisor.serve()
    sock.close()
    if status == 0:
        print("ebscrypt stopped")
    return status


def _serve_args_problem(args: argparse.Namespace, auth: str, loopback: bool) -> str | None:
    """What is wrong with ``serve``'s options (exit status 2), or None. Creates the data
    directory, since whether it can be written is one of the checks."""
    if auth == "dev" and not loopback:
        return "--auth dev is only allowed on a loopback address; use --auth strict"
    if auth == "strict" and args.credentials is None:
        return "--auth strict needs --credentials FILE"
    if not _ACCOUNT_RE.match(args.default_account):
        return f"--default-account must be a 12-digit account id, not {args.default_account!r}"
    if not 1 <= args.workers <= MAX_WORKERS:
        return f"--workers must be 1 to {MAX_WORKERS}, not {args.workers}"
    if not 1 <= args.job_workers <= MAX_WORKERS:  # none: queued jobs would never run
        return f"--job-workers must be 1 to {MAX_WORKERS}, not {args.job_workers}"
    if not 0 <= args.block_workers <= MAX_WORKERS:
        return f"--block-workers must be 0 to {MAX_WORKERS}, not {args.block_workers}"
    if args.nbd_cache_mib < MIN_NBD_CACHE_MIB:  # four 512 KiB blocks: a write-back needs room to turn
        return f"--nbd-cache-mib must be at least {MIN_NBD_CACHE_MIB}, not {args.nbd_cache_mib}"
    if args.credentials is not None:
        from ebscrypt.identity import load_credentials

        try:
            load_credentials(args.credentials)
        except (OSError, ValueError) as exc:
            return f"cannot use --credentials {args.credentials}: {getattr(exc, 'strerror', None) or exc}"
    try:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create --data-dir {args.data_dir}: {exc.strerror or exc}"
    if not os.access(args.data_dir, os.W_OK | os.X_OK):
        return f"--data-dir {args.data_dir} is not writable"
    return _nbd_and_store_problem(args)


def _nbd_and_store_problem(args: argparse.Namespace) -> str | None:
    """The NBD, block store and root key options' problem, or None."""
    if (args.nbd_tls_cert is None) != (args.nbd_tls_key is None):
        return "--nbd-tls-cert and --nbd-tls-key go together"
    if args.nbd_port and not _is_loopback(args.nbd_host) and args.nbd_tls_cert is None:
        return ("NBD on a non-loopback address requires TLS (--nbd-tls-cert and --nbd-tls-key): "
                "NBD itself carries no credentials; use --nbd-port 0 to disable NBD")
    if args.blocks is not None and "://" in args.blocks and not args.blocks.startswith("s3://"):
        return f"--blocks takes s3://BUCKET[/PREFIX] or a directory, not {args.blocks!r}"
    if args.root_key_file is not None and args.key_store is not None:
        return "--root-key-file and --key-store both name the root of trust: give one"
    return None


def _bind(args: argparse.Namespace) -> socket.socket | str:
    """The endpoint's listening socket, after probing the NBD port; or what went wrong."""
    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        return (f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                f"(another server there? choose a port with --port)")
    if args.nbd_port:
        try:  # only a probe: the NBD server binds it itself at start; a taken port fails here, not later
            _listen(args.nbd_host, args.nbd_port).close()
        except OSError as exc:
            sock.close()
            return (f"cannot listen on {args.nbd_host}:{args.nbd_port} for NBD: {exc.strerror or exc} "
                    f"(choose a port with --nbd-port, or 0 to disable NBD)")
    return sock


def _settings(args: argparse.Namespace, auth: str) -> Settings:
    return Settings(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        db_url=args.db,
        auth=auth,
        default_account=args.default_account,
        credentials_file=args.credentials,
        allowed_hosts=tuple(args.allowed_host),
        cors_origins=tuple(args.cors_origin),
        key_store=args.key_store,
        console=args.console,
        nbd_host=args.nbd_host,
        nbd_port=args.nbd_port,
        nbd_tls_cert=args.nbd_tls_cert,
        nbd_tls_key=args.nbd_tls_key,
        nbd_cache_mib=args.nbd_cache_mib,
        blocks_url=args.blocks,
        s3_endpoint_url=args.s3_endpoint_url,
        s3_profile=args.s3_profile,
        job_workers=args.job_workers,
        block_workers=args.block_workers,
        workers=args.workers,
    )


def _announce(args: argparse.Namespace, auth: str) -> None:
    """The start banner: the endpoint, a command to try, the key store, console and NBD."""
    host = f"[{args.host}]" if ":" in args.host else args.host
    endpoint = f"http://{host}:{args.port}"
    print(f"ebscrypt {__version__} serving on {endpoint} (auth: {auth}, data: {args.data_dir.resolve()})")
    if auth == "dev":
        # The AWS CLI insists on a region and some credentials; dev auth checks neither
        # (a 12-digit access key id acts as that account).
        print(f"try:  AWS_ACCESS_KEY_ID={args.default_account} AWS_SECRET_ACCESS_KEY=dev AWS_DEFAULT_REGION=us-east-1 "
              f"aws --endpoint-url {endpoint} ec2 describe-regions")
    else:
        print(f"try:  aws --endpoint-url {endpoint} ec2 describe-regions   (with a key from {args.credentials})")
    print(f"key store: {_key_store_name(args.key_store, args.data_dir)}")
    if args.console:
        print(f"console: {endpoint}/_console/")
    if args.nbd_port:
        scheme = "nbds" if args.nbd_tls_cert else "nbd"
        print(f"attached volumes: {scheme}://{args.nbd_host}:{args.nbd_port}/<volume-id>")
    sys.stdout.flush()


def _run(args: argparse.Namespace, settings: Settings, sock: socket.socket, *, quiet: bool = False) -> int:
    """Serve on ``sock`` until stopped; the exit status (``quiet``: a worker of several,
    whose parent says when the server stopped)."""
    import uvicorn

    from ebscrypt.app import build_app
    from ebscrypt.fd_limit import raise_open_files_limit
    from ebscrypt.heap import reuse_large_buffers
    from ebscrypt.wire.http_server import protocol_class

    reuse_large_buffers()  # 512 KiB blocks reused by malloc, not mapped afresh (issue 15)
    raise_open_files_limit()  # before the block store sizes its descriptor cache from it

    # uvicorn catches SIGINT/SIGTERM: it stops accepting, finishes requests, runs the
    # lifespan shutdown (job workers stopped, database closed), then re-raises the signal
    # to the handlers below, so a requested stop exits with status 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # proxy_headers off: the app applies uvicorn's middleware to the routes that read the
    # client's scheme (the console), not to every API call (ebscrypt/app.py, issue 15).
    # The HTTP protocol: uvicorn's, sending each response in one write (wire/http_server.py).
    config = uvicorn.Config(build_app(settings), log_level=args.log_level, access_log=False,
                            http=protocol_class(args.http), loop=args.loop, proxy_headers=False)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:
        # 0: a requested stop (SIGTERM, above). Otherwise uvicorn's startup failure (the
        # reason is printed already, e.g. a root key that does not unwrap this database).
        if exc.code not in (None, 0):
            print("ebscrypt: did not start", file=sys.stderr)
            return exc.code if isinstance(exc.code, int) else 1
    if not server.started:  # the lifespan failed (the reason is printed already)
        print("ebscrypt: did not start", file=sys.stderr)
        return 3
    if not quiet:
        print("ebscrypt stopped")
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (as uvicorn binds it), or OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # proto says TCP; with proto 0 every small response waited for the client's delayed
    # ACK (~40 ms a request). TCP_NODELAY here too: accepted sockets inherit it on Linux.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _audit_log(args: argparse.Namespace, _rest: list[str]) -> int:
    from ebscrypt.engines.kms.audit import audit_path, print_log

    if not args.data_dir.is_dir():
        return _fail(f"no data directory at {args.data_dir} (give the server's --data-dir)")
    if not audit_path(args.data_dir).exists():
        sys.stderr.write(f"ebscrypt: no KMS audit records yet in {args.data_dir}\n")
        return 0
    try:
        print_log(args.data_dir)
    except (OSError, ValueError) as exc:
        return _fail(f"cannot read the audit trail in {args.data_dir}: {exc}")
    return 0


def _fail(message: str, status: int = 1) -> int:
    sys.stderr.write(f"ebscrypt: {message}\n")
    return status


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
        _fail(str(err))
        return None


def _read_db(args: argparse.Namespace, read: Callable[[Any], T]) -> T | None:
    """``read(conn)`` in one read transaction of the metadata database opened read-only;
    None when there is no database (the message is printed)."""
    db = _open_db(args)
    if db is None:
        return None
    try:
        with db.read() as conn:
            return read(conn)
    finally:
        db.dispose()


def _explain(args: argparse.Namespace, _rest: list[str]) -> int:
    import json

    from ebscrypt.engines.insight.explain import explain, render_text
    from ebscrypt.errors import ServiceError

    try:
        result = _read_db(args, lambda conn: explain(conn, args.resource_id))
    except ServiceError as err:
        return _fail(err.message)
    if result is None:
        return 2
    print(json.dumps(result.as_dict(), indent=2) if args.json else render_text(result))
    return 0


def _report(args: argparse.Namespace, _rest: list[str]) -> int:
    from ebscrypt.engines.insight.posture import at_or_above, report
    from ebscrypt.engines.insight.render import findings_csv, findings_json, findings_table, terminal_width

    findings = _read_db(args, lambda conn: report(conn, args.account))
    if findings is None:
        return 2
    if args.format == "table":
        sys.stdout.write(findings_table(findings, width=terminal_width()))
    else:
        sys.stdout.write((findings_json if args.format == "json" else findings_csv)(findings))
    if args.fail_on and at_or_above(findings, args.fail_on):
        return 1
    return 0
