"""The ASGI application: HTTP in, one service handler called, HTTP out.

Per request: refuse what a web page in the user's browser could have sent (foreign
``Host``, untrusted ``Origin``, ``Sec-Fetch-Site: cross-site``; see
:mod:`ebscrypt.wire.origin`), read the body (refusing oversized ones before reading them
whole), read the SigV4 scope, authenticate, route to a service, parse with that service's model-driven
codec, run the handler in a worker thread (handlers do blocking SQL and crypto), and
serialize the result or the error in the protocol's own envelope.
"""

from __future__ import annotations

import gc
import logging
import sys
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from ebscrypt.blocking import WouldBlock, on_loop
from ebscrypt.console.app import Console
from ebscrypt.context import RequestContext, Runtime, Settings
from ebscrypt.engines.blocks.store import StoreUnavailable
from ebscrypt.engines.kms.keystore import RootKeyError
from ebscrypt.errors import InternalFailure, PayloadTooLarge, ServiceError, ServiceUnavailable, UnknownOperation
from ebscrypt.identity import Authenticator, load_credentials
from ebscrypt.runtime import build_runtime, close_runtime
from ebscrypt.services import registry
from ebscrypt.storage.db import commits_in_context, conflict_backoff, is_conflict
from ebscrypt.storage.space import is_out_of_space
from ebscrypt.wire import origin, routing, sigv4
from ebscrypt.wire.codec import codec_for
from ebscrypt.wire.http import HttpRequest, HttpResponse

log = logging.getLogger("ebscrypt.app")

# A model operation this server has no handler for: each protocol's own wording.
_NOT_IMPLEMENTED_CODE = {
    "ec2": "UnsupportedOperation",
    "sts": "InvalidAction",
    "kms": "UnsupportedOperationException",
    "ebs": "ValidationException",
}
_INTERNAL_CODE = {
    "ec2": "InternalError",
    "sts": "InternalFailure",
    "kms": "KMSInternalException",
    "ebs": "InternalServerException",
}
# A request refused as one a web page made (403, as the issue of a browser-borne request).
_FORBIDDEN_CODE = {
    "ec2": "UnauthorizedOperation",
    "sts": "AccessDenied",
    "kms": "AccessDeniedException",
    "ebs": "AccessDeniedException",
}

# A backend (the block object store) unavailable: HTTP 503 (the SDKs retry on the status),
# under EC2's own code for it; EBS and KMS models have none (their internal-error codes
# would be rendered as 500), so theirs is the generic ServiceUnavailableException.
_UNAVAILABLE_CODE = {
    "ec2": "Unavailable",
    "sts": "ServiceUnavailable",
    "kms": "ServiceUnavailableException",
    "ebs": "ServiceUnavailableException",
}


class Gateway:
    """Everything one request needs, built once per process."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime
        credentials = load_credentials(settings.credentials_file) if settings.credentials_file else None
        self.auth = Authenticator(settings.auth, settings.default_account, credentials)
        self.origins = origin_policy(settings)
        # Handlers registered inline run on the event loop when the metadata database is
        # SQLite (a read is a local call); on PostgreSQL a read is a network round trip.
        self.inline = bool(getattr(runtime.db, "is_sqlite", False))

    async def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        service = "ec2"  # the envelope for errors raised before a service is known
        operation = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        cors = origin.cors_headers(self.origins, headers)
        try:
            refused = origin.refusal(self.origins, headers)
            if request.method == "OPTIONS":
                answer = origin.preflight_headers(self.origins, headers)
                if refused is None and answer is not None and origin.is_preflight(request.method, headers):
                    return Response(status_code=200, headers=dict(answer))
                refused = refused or "OPTIONS is only answered as the CORS preflight of an origin given with --cors-origin."
            http = await _read(request, self.settings.max_body_bytes)
            scope = sigv4.read_scope(http)
            routed = routing.service_for(http, scope.service if scope else None)
            if refused is not None:  # before authentication and parsing: nothing runs
                service = routed or "ec2"
                raise ServiceError(refused, code=_FORBIDDEN_CODE[service], status=403)
            if routed is None:
                raise UnknownOperation("The request names no AWS service or action this endpoint serves.")
            service = routed
            caller = self.auth.authenticate(http, scope, self.runtime.clock.now())
            codec = codec_for(service)
            operation, params = codec.parse(http)
            handler = registry.handler_for(service, operation.name)
            if handler is None:
                raise ServiceError(
                    f"The operation {operation.name} is not supported by ebscrypt.",
                    code=_NOT_IMPLEMENTED_CODE[service],
                )
            ctx = RequestContext(caller, self.runtime, request_id, service, operation.name)
            # An inline handler (KMS data-key calls) runs and answers on the event loop; any
            # other — or one that reached a step that can wait — runs in a worker thread, its
            # answer serialized there too: a Describe of 1,000 items is milliseconds of XML
            # that would otherwise hold the event loop (issue 15).
            result = _run_on_loop(handler, ctx, params) if self.inline and registry.is_inline(handler) else _DEFER
            if result is _DEFER:
                answer = await run_in_threadpool(_answer, handler, ctx, params, codec, operation)
            else:
                answer = codec.serialize(operation, result or {}, request_id)
            self.runtime.space.note_success()
            return _to_starlette(answer, cors)
        except ServiceError as error:
            if isinstance(error, ServiceUnavailable) and error.code == "ServiceUnavailable":
                log.warning("%s %s: %s (request %s)", service, operation and operation.name, error.message, request_id)
                error.code = _UNAVAILABLE_CODE[service]
            return _to_starlette(codec_for(service).serialize_error(error, request_id), cors)
        except Exception as exc:
            if is_out_of_space(exc):  # retryable 503; the monitor logs the condition once
                what = f"the result of {operation.name}" if operation else "the request"
                error = self.runtime.space.error(what, _root_cause(exc))
                return _to_starlette(codec_for(service).serialize_error(error, request_id), cors)
            log.exception("internal error in %s %s (request %s)", service, operation and operation.name, request_id)
            error = InternalFailure(
                "An internal error occurred; the request changed nothing that was not acknowledged.",
                code=_INTERNAL_CODE[service],
            )
            return _to_starlette(codec_for(service).serialize_error(error, request_id), cors)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost error (the OSError or driver error), whose text names the cause."""
    while True:
        inner = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
        if not isinstance(inner, BaseException) or inner is exc:
            return exc
        exc = inner


def origin_policy(settings: Settings) -> origin.OriginPolicy:
    return origin.OriginPolicy.for_server(settings.host, settings.allowed_hosts, settings.cors_origins)


# How many times a request that lost a race on PostgreSQL (serialization failure) is run.
REQUEST_CONFLICT_ATTEMPTS = 6


_DEFER = object()


def _run_on_loop(handler: Any, ctx: RequestContext, params: dict[str, Any]) -> Any:
    """Run an inline handler on the event loop; ``_DEFER`` if it reached a step that can
    wait (nothing done yet: the caller runs it in a worker thread; ebscrypt/blocking.py)."""
    try:
        with on_loop():
            return handler(ctx, params)
    except WouldBlock:
        return _DEFER


def _answer(handler: Any, ctx: RequestContext, params: dict[str, Any], codec: Any, operation: Any) -> HttpResponse:
    """The handler's result, serialized by the service's codec. [worker thread]"""
    return codec.serialize(operation, _run_handler(handler, ctx, params) or {}, ctx.request_id)


def _run_handler(handler: Any, ctx: RequestContext, params: dict[str, Any]) -> Any:
    """Run the handler; when it loses a race with a concurrent request (PostgreSQL's
    serializable transactions: ``db.is_conflict``) before it committed anything, run it
    again — the conflicting transaction changed nothing. A conflict after a commit of
    this request (a second transaction) is not replayed here: the client gets a
    retryable 503."""
    for attempt in range(REQUEST_CONFLICT_ATTEMPTS):
        committed = commits_in_context()
        try:
            return handler(ctx, params)
        except Exception as exc:
            if not is_conflict(exc):
                raise
            if commits_in_context() != committed or attempt == REQUEST_CONFLICT_ATTEMPTS - 1:
                raise ServiceUnavailable(
                    "The request conflicted with concurrent requests on the same resources; retry it."
                ) from exc
        log.debug("%s %s: conflict with a concurrent request, attempt %d", ctx.service, ctx.operation, attempt + 1)
        conflict_backoff(attempt)
    raise AssertionError("unreachable")


async def _read(request: Request, limit: int) -> HttpRequest:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than the {limit} bytes this endpoint accepts.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the {limit} bytes this endpoint accepts.")
        chunks.append(chunk)
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    return HttpRequest(
        method=request.method,
        path=raw_path.decode("latin-1"),
        query=request.scope.get("query_string", b"").decode("latin-1"),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=b"".join(chunks),
    )


def _to_starlette(response: HttpResponse, extra: Sequence[tuple[str, str]] = ()) -> Response:
    out = Response(content=response.body, status_code=response.status)
    for name, value in [*response.headers, *extra]:
        out.headers[name] = value
    return out


def _settle_heap() -> None:
    """Load the service models now and move what start-up made out of the cyclic garbage
    collector's reach (``gc.freeze``): they live as long as the process, and a full
    collection — which the many short-lived objects of large answers (a Describe page of
    1,000 items) trigger every few calls — walked all ~100,000 of them each time (issue 15,
    Describe at scale: 40-150 ms a collection on this machine)."""
    for service in ("ec2", "kms", "ebs"):
        codec_for(service)
    gc.freeze()


def build_app(settings: Settings) -> Starlette:
    """The ASGI app; the runtime (database, engines, job workers) lives with its lifespan."""
    state: dict[str, Gateway] = {}
    origins = origin_policy(settings)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            runtime = build_runtime(settings)
        except (RootKeyError, StoreUnavailable) as exc:
            # A server that must not (wrong root key) or cannot (no block store) serve: one
            # clear line, and the start fails (non-zero exit).
            print(f"ebscrypt: cannot start: {exc}", file=sys.stderr, flush=True)
            raise
        state["gateway"] = Gateway(settings, runtime)
        _settle_heap()
        nbd_server = None
        try:
            if settings.nbd_port:
                # Attached volumes as block devices, on this same event loop (R-ATTACH-3).
                from ebscrypt.wire import nbd_server as nbd_serving

                nbd_server, bound = await nbd_serving.start(runtime, settings.nbd_host, settings.nbd_port)
                log.info("NBD exports on nbd://%s:%d/<volume-id>", settings.nbd_host, bound)
            yield
        finally:
            if nbd_server is not None:
                await nbd_server.close()
            close_runtime(runtime)

    async def aws(request: Request) -> Response:
        return await state["gateway"].handle(request)

    def refused(request: Request) -> Response | None:
        why = origin.refusal(origins, {k.lower(): v for k, v in request.headers.items()})
        return None if why is None else JSONResponse({"message": why}, status_code=403)

    async def health(request: Request) -> Response:
        return refused(request) or JSONResponse({"status": "ok", "auth": settings.auth})

    async def ready(_request: Request) -> Response:
        # For load balancers: 200 when this process can reach its database (one read),
        # 503 otherwise, so the balancer stops sending it requests until it can again.
        def check() -> None:
            with state["gateway"].runtime.db.read() as conn:
                conn.exec_driver_sql("SELECT 1")

        try:
            await run_in_threadpool(check)
        except Exception as exc:  # the database is down or unreachable
            return JSONResponse({"status": "unavailable", "cause": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def advance_clock(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        # Lets tests reach the end of waiting periods (KMS key deletion, snapshot
        # timeouts). Only in dev auth: a real deployment's clock is not for callers.
        if settings.auth != "dev":
            return JSONResponse({"message": "not available in strict auth mode"}, status_code=403)
        try:
            seconds = float(request.query_params.get("seconds", ""))
        except ValueError:
            return JSONResponse({"message": "seconds must be a number"}, status_code=400)
        now = state["gateway"].runtime.clock.advance(seconds)
        return JSONResponse({"now": now.isoformat()})

    # The read-only web console (ebscrypt/console): the same process, runtime and
    # authenticator as the API; its own sign-in (a session cookie) instead of SigV4.
    console = Console(lambda: state["gateway"])

    methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]
    routes = [
        Route("/_ebscrypt/health", health, methods=["GET"]),
        Route("/_ebscrypt/ready", ready, methods=["GET"]),
        Route("/_ebscrypt/clock/advance", advance_clock, methods=["POST"]),
    ]
    if settings.console:
        routes += [
            Route("/_console", lambda _r: RedirectResponse("/_console/", status_code=308), methods=["GET"]),
            Mount("/_console", app=console.routes()),
        ]
    routes.append(Route("/{path:path}", aws, methods=methods))
    return Starlette(routes=routes, lifespan=lifespan)
