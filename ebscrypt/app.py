"""The ASGI application: HTTP in, one service handler called, HTTP out.

The AWS API (every path but ``/_ebscrypt/…`` and ``/_console``) is served by
:class:`Gateway` as a plain ASGI callable: the body read from ``receive``, an
:class:`~ebscrypt.wire.http.HttpRequest` built from the scope, the answer sent as two
messages. Starlette's Request/Response objects, routing and middleware cost a KMS
data-key call ~16% of the event loop's CPU (issue 15, bench/README.md section A), so
they serve only the console and the health/ready/clock routes (:func:`build_app`); the
HTTP protocols send each response in one write (:mod:`ebscrypt.wire.http_server`).

Per request: refuse what a web page in the user's browser could have sent (foreign
``Host``, untrusted ``Origin``, ``Sec-Fetch-Site: cross-site``; see
:mod:`ebscrypt.wire.origin`), read the body (refusing oversized ones before reading them
whole), read the SigV4 scope, authenticate, route to a service, parse with that service's model-driven
codec, run the handler in a worker thread (handlers do blocking SQL and crypto), and
serialize the result or the error in the protocol's own envelope.
The worker threads are the gateway's own (:mod:`ebscrypt.handoff`).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, MutableMapping, Sequence

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ebscrypt.blocking import WouldBlock, on_loop
from ebscrypt.console.app import Console
from ebscrypt.context import RequestContext, Runtime, Settings
from ebscrypt.engines.blocks.store import StoreUnavailable
from ebscrypt.engines.kms.keystore import RootKeyError
from ebscrypt.errors import InternalFailure, PayloadTooLarge, ServiceError, ServiceUnavailable, UnknownOperation
from ebscrypt.handoff import WorkerThreads
from ebscrypt.identity import Authenticator, load_credentials
from ebscrypt.ids import uuid4_str
from ebscrypt.runtime import build_runtime, close_runtime
from ebscrypt.services import registry
from ebscrypt.storage.db import commits_in_context, conflict_backoff, is_conflict
from ebscrypt.storage.space import is_out_of_space
from ebscrypt.wire import origin, routing, sigv4
from ebscrypt.wire.codec import codec_for
from ebscrypt.wire.http import HttpRequest, HttpResponse, asgi_headers

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


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The methods the API answers (others: 405, as Starlette's route answered them).
API_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")
_METHOD_NOT_ALLOWED = (
    405,
    [(b"content-type", b"text/plain; charset=utf-8"), (b"allow", ", ".join(API_METHODS).encode())],
    b"Method Not Allowed",
)


class _Disconnected(Exception):
    """The client went away before its request body was read: nothing to answer."""


class Gateway:
    """Everything one request needs, built once per process; an ASGI app (the AWS API)."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime
        credentials = load_credentials(settings.credentials_file) if settings.credentials_file else None
        self.auth = Authenticator(settings.auth, settings.default_account, credentials)
        self.origins = origin_policy(settings)
        # Handlers registered inline run on the event loop when the metadata database is
        # SQLite (a read is a local call); on PostgreSQL a read is a network round trip.
        self.inline = bool(getattr(runtime.db, "is_sqlite", False))
        # The threads that run every other handler (ebscrypt/handoff.py: a cheaper hand-off
        # than anyio's); stopped with the runtime (build_app's lifespan).
        self.workers = WorkerThreads()
        # serve --workers N: each answer names the worker that made it (index/pid), so a
        # person or a test can see requests spread over the processes.
        self.worker_header: tuple[tuple[str, str], ...] = (
            (("x-ebscrypt-worker", f"{settings.worker_index}/{os.getpid()}"),) if settings.workers > 1 else ())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One AWS API request, from the ASGI scope to the two response messages."""
        if scope["method"] not in API_METHODS:
            status, raw, body = _METHOD_NOT_ALLOWED
        else:
            try:
                response, extra = await self.handle(scope, receive)
            except _Disconnected:
                return
            status, body = response.status, response.body
            raw = asgi_headers(response, extra)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def handle(self, scope: Scope, receive: Receive) -> tuple[HttpResponse, Sequence[tuple[str, str]]]:
        """The answer to one request and the CORS headers to send with it."""
        request_id, headers, cors, early, refused = self._before_body(scope)
        if early is not None:
            return early, ()
        try:
            http = await _read(scope, headers, receive, self.settings.max_body_bytes)
        except _Disconnected:
            raise
        except Exception as error:
            return self._failure(error, "ec2", None, request_id), cors
        answer = self.respond(http, refused, request_id)
        if isinstance(answer, Deferred):
            answer = await self.finish(answer)
        return answer, cors

    def answer_whole(self, scope: Scope, body: bytes) -> tuple[HttpResponse | Deferred, Sequence[tuple[str, str]]]:
        """The answer to a request whose whole body has been read already (the HTTP
        protocol's path for small API requests, wire/http_server.py): as :meth:`handle`
        gives it, or a :class:`Deferred` (:meth:`finish`) for a handler that runs in a
        worker thread. Never raises: errors are answers."""
        request_id, headers, cors, early, refused = self._before_body(scope)
        if early is not None:
            return early, ()
        limit = self.settings.max_body_bytes
        if len(body) > limit:
            too_large = PayloadTooLarge(f"The request body is larger than the {limit} bytes this endpoint accepts.")
            return self._failure(too_large, "ec2", None, request_id), cors
        return self.respond(_request(scope, headers, body), refused, request_id), cors

    def _before_body(self, scope: Scope) -> tuple[
            str, dict[str, str], Sequence[tuple[str, str]], HttpResponse | None, str | None]:
        """What both request paths learn before the body: the request id, the headers, the
        CORS headers to answer with, a CORS preflight's answer (nothing else to do), and
        why the request is refused as one a web page could have sent (None: it is not)."""
        request_id = uuid4_str()
        headers = _headers(scope)
        method: str = scope["method"]
        cors = origin.cors_headers(self.origins, headers) if "origin" in headers else ()
        if self.worker_header:
            cors = (*cors, *self.worker_header)
        refused = origin.refusal(self.origins, headers)
        if method == "OPTIONS":
            preflight = origin.preflight_headers(self.origins, headers)
            if refused is None and preflight is not None and origin.is_preflight(method, headers):
                return request_id, headers, cors, HttpResponse(200, list(preflight)), None
            refused = refused or "OPTIONS is only answered as the CORS preflight of an origin given with --cors-origin."
        return request_id, headers, cors, None, refused

    def respond(self, http: HttpRequest, refused: str | None, request_id: str) -> HttpResponse | Deferred:
        """The answer to a request read whole: authenticated, routed, parsed, and run
        here if its handler is inline, else a :class:`Deferred` for a worker thread."""
        service = "ec2"  # the envelope for errors raised before a service is known
        operation = None
        try:
            scope_ = sigv4.read_scope(http)
            routed = routing.service_for(http, scope_.service if scope_ else None)
            if refused is not None:  # before authentication and parsing: nothing runs
                service = routed or "ec2"
                raise ServiceError(refused, code=_FORBIDDEN_CODE[service], status=403)
            if routed is None:
                raise UnknownOperation("The request names no AWS service or action this endpoint serves.")
            service = routed
            caller = self.auth.authenticate(http, scope_, self.runtime.clock.now())
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
            # that would otherwise hold the event loop (issue 15). One hand-off per request.
            result = _run_on_loop(handler, ctx, params) if self.inline and registry.is_inline(handler) else _DEFER
            if result is _DEFER:
                return Deferred(handler, ctx, params, codec, operation)
            answer: HttpResponse = codec.serialize(operation, result or {}, request_id)
            self.runtime.space.note_success()
            return answer
        except Exception as error:
            return self._failure(error, service, operation, request_id)

    async def finish(self, deferred: Deferred) -> HttpResponse:
        """A deferred request's answer, its handler run in a worker thread."""
        ctx = deferred.ctx
        try:
            answer = await self.workers.run(
                _answer, deferred.handler, ctx, deferred.params, deferred.codec, deferred.operation
            )
        except Exception as error:
            return self._failure(error, ctx.service, deferred.operation, ctx.request_id)
        self.runtime.space.note_success()
        return answer

    def _failure(self, error: Exception, service: str, operation: Any, request_id: str) -> HttpResponse:
        """An error's answer in ``service``'s envelope (unexpected ones logged, as
        internal errors that changed nothing unacknowledged)."""
        if isinstance(error, ServiceError):
            if isinstance(error, ServiceUnavailable) and error.code == "ServiceUnavailable":
                log.warning("%s %s: %s (request %s)", service, operation and operation.name, error.message, request_id)
                error.code = _UNAVAILABLE_CODE[service]
            return codec_for(service).serialize_error(error, request_id)
        if is_out_of_space(error):  # retryable 503; the monitor logs the condition once
            what = f"the result of {operation.name}" if operation else "the request"
            full = self.runtime.space.error(what, _root_cause(error))
            return codec_for(service).serialize_error(full, request_id)
        log.error(
            "internal error in %s %s (request %s)", service, operation and operation.name, request_id, exc_info=error
        )
        internal = InternalFailure(
            "An internal error occurred; the request changed nothing that was not acknowledged.",
            code=_INTERNAL_CODE[service],
        )
        return codec_for(service).serialize_error(internal, request_id)


class Deferred:
    """A request whose handler runs in a worker thread (:meth:`Gateway.finish`)."""

    __slots__ = ("handler", "ctx", "params", "codec", "operation")

    def __init__(self, handler: Any, ctx: RequestContext, params: dict[str, Any], codec: Any, operation: Any) -> None:
        self.handler = handler
        self.ctx = ctx
        self.params = params
        self.codec = codec
        self.operation = operation


def _headers(scope: Scope) -> dict[str, str]:
    """Header names arrive lower-cased (uvicorn); a repeated header keeps its last value."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


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
    response: HttpResponse = codec.serialize(operation, _run_handler(handler, ctx, params) or {}, ctx.request_id)
    return response


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


async def _read(scope: Scope, headers: dict[str, str], receive: Receive, limit: int) -> HttpRequest:
    """The request with its whole body; an oversized body refused before it is read when
    its Content-Length says so, else as soon as it passes ``limit``."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than the {limit} bytes this endpoint accepts.")
    body = b""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise _Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the {limit} bytes this endpoint accepts.")
        if not message.get("more_body", False):
            # Most bodies come in one message: no join, no copy.
            body = b"".join((*chunks, chunk)) if chunks else chunk
            break
        chunks.append(chunk)
    return _request(scope, headers, body)


def _request(scope: Scope, headers: dict[str, str], body: bytes) -> HttpRequest:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    return HttpRequest(
        method=scope["method"],
        path=raw_path.decode("latin-1"),
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=body,
    )


class App:
    """The server's ASGI app: the AWS API straight to the :class:`Gateway`; the lifespan,
    ``/_ebscrypt/…`` and the console to Starlette (behind uvicorn's proxy-headers
    middleware, which only they use: the console's cookie follows the scheme a trusted
    proxy reports)."""

    def __init__(self, site: Starlette, state: dict[str, Gateway]) -> None:
        trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
        self.site = ProxyHeadersMiddleware(site, trusted_hosts=trusted)  # type: ignore[arg-type]
        self._state = state

    def whole_body_gateway(self, scope: Scope) -> Gateway | None:
        """The gateway, for an AWS API request (the HTTP protocol's whole-body path:
        ebscrypt/wire/http_server.py); None for the routes Starlette serves."""
        if _site_path(scope["path"]):
            return None
        return self._state.get("gateway")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _site_path(scope["path"]) and "gateway" in self._state:
            await self._state["gateway"](scope, receive, send)
        else:
            await self.site(scope, receive, send)  # type: ignore[arg-type]  # uvicorn's typed-dict scopes


class _ToGateway:
    """The running gateway as a Starlette route's ASGI endpoint."""

    def __init__(self, state: dict[str, Gateway]) -> None:
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._state["gateway"](scope, receive, send)


def _site_path(path: str) -> bool:
    """Paths Starlette serves (unknown ones there fall back to the gateway, as before)."""
    return path.startswith("/_ebscrypt/") or path == "/_console" or path.startswith("/_console/")


# Containers allocated (net of those freed) between two collections of the youngest
# generation; Python's default is 700. A Describe page of 1,000 items holds ~3,000–5,000
# live containers until it is written (its rows, tag lists, decoded mappings), so at 700
# every page ran ~4 young collections that each found nothing to free and pushed the page's
# objects into older generations to be walked again (issue 15: ~10% of a cold DescribeImages
# page, ~2.4–3.6 ms, in gc callbacks' timing). Past a page's size, a page runs none; the
# garbage cycles it may leave wait a little longer, bounded by this count.
YOUNG_COLLECTION_THRESHOLD = 10_000


def _settle_heap() -> None:
    """Load the service models now and move what start-up made out of the cyclic garbage
    collector's reach (``gc.freeze``): they live as long as the process, and a full
    collection — which the many short-lived objects of large answers (a Describe page of
    1,000 items) trigger every few calls — walked all ~100,000 of them each time (issue 15,
    Describe at scale: 40-150 ms a collection on this machine); and collect the youngest
    generation less often (``YOUNG_COLLECTION_THRESHOLD``)."""
    for service in ("ec2", "kms", "ebs"):
        codec_for(service)
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


def build_app(settings: Settings) -> App:
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
            if settings.nbd_port and settings.primary:
                # Attached volumes as block devices, on this same event loop (R-ATTACH-3);
                # with serve --workers N, in worker 0 alone (engines/attach/remote.py).
                from ebscrypt.wire import nbd_server as nbd_serving

                nbd_server, bound = await nbd_serving.start(runtime, settings.nbd_host, settings.nbd_port)
                log.info("NBD exports on nbd://%s:%d/<volume-id>", settings.nbd_host, bound)
            yield
        finally:
            if nbd_server is not None:
                await nbd_server.close()
            state["gateway"].workers.close()
            close_runtime(runtime)

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
        # Which process answered: with serve --workers N, requests spread over the workers.
        return JSONResponse({"status": "ok", "pid": os.getpid(), "worker": settings.worker_index})

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

    routes: list[BaseRoute] = [
        Route("/_ebscrypt/health", health, methods=["GET"]),
        Route("/_ebscrypt/ready", ready, methods=["GET"]),
        Route("/_ebscrypt/clock/advance", advance_clock, methods=["POST"]),
    ]
    if settings.console:
        routes += [
            Route("/_console", lambda _r: RedirectResponse("/_console/", status_code=308), methods=["GET"]),
            Mount("/_console", app=console.routes()),
        ]
    # Paths under /_ebscrypt/ and /_console that no route above names: the API's.
    routes.append(Route("/{path:path}", _ToGateway(state), methods=list(API_METHODS)))
    return App(Starlette(routes=routes, lifespan=lifespan), state)
