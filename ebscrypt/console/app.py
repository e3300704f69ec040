"""Routes of the console (mounted at ``/_console`` by ebscrypt/app.py).

Who may see what: the viewer's account comes from the session (console/session.py);
every page shows only that account's resources, and a page of another account's
resource or key answers 404 as if it did not exist (the API's NotFound). Never
reachable cross-site: no CORS headers; a request a browser marks ``Sec-Fetch-Site:
cross-site`` is refused, sign-in/out POSTs must carry this origin; cookies are
SameSite=Strict and HttpOnly; pages may not be framed (CSP frame-ancestors 'none').
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route, Router

from ebscrypt.console import svg
from ebscrypt.console.session import COOKIE, LIFETIME_SECONDS, Sessions, Viewer
from ebscrypt.domain import regions
from ebscrypt.engines.insight import explain as explain_mod
from ebscrypt.engines.insight import inventory, lineage, posture, trail
from ebscrypt.engines.insight import resources as res
from ebscrypt.engines.insight.records import Node
from ebscrypt.errors import ServiceError

HERE = Path(__file__).parent
PREFIX = "/_console"
DEFAULT_REGION = "us-east-1"
FORM_LIMIT = 4096  # bytes of a sign-in form
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}

_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)


class Console:
    """One console per server process; ``gateway()`` gives the running Gateway (built
    in the app's lifespan: its runtime and authenticator)."""

    def __init__(self, gateway: Callable[[], Any]) -> None:
        self._gateway = gateway
        self._sessions: Sessions | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def runtime(self) -> Any:
        return self._gateway().runtime

    @property
    def sessions(self) -> Sessions:
        if self._sessions is None:
            gateway = self._gateway()
            self._sessions = Sessions(gateway.auth, gateway.settings.console_key)
        return self._sessions

    def page(self, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        region = values.pop("region", None) or DEFAULT_REGION
        html = _env.get_template(template).render(
            prefix=PREFIX, auth_mode=self._gateway().auth.mode, kinds=inventory.KINDS, region=region,
            url=lambda path, **q: _url(path, region=region, **q), **values)
        response = HTMLResponse(html, status_code=status)
        _secure(response)
        return response

    def refused(self, request: Request, viewer: Viewer | None, message: str, status: int = 404) -> HTMLResponse:
        return self.page(request, "error.html", status=status, viewer=viewer, message=message,
                         region=_region(request))

    def viewer(self, request: Request) -> Viewer | None:
        return self.sessions.viewer(request.cookies.get(COOKIE))

    # ------------------------------------------------------------------ routes

    def routes(self) -> Router:
        def guarded(handler: Callable[..., Any], *, signed_in: bool = True) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Response:
                if _cross_site(request):
                    return _forbidden("cross-site requests to the console are refused")
                if request.method == "POST" and not _same_origin(request):
                    return _forbidden("the form was not sent from this console")
                if not signed_in:
                    return await handler(request, None)
                viewer = self.viewer(request)
                if viewer is None:
                    return RedirectResponse(f"{PREFIX}/login", status_code=303)
                return await handler(request, viewer)
            return endpoint

        return Router(routes=[
            Route("/", guarded(self.overview), methods=["GET"]),
            Route("/login", guarded(self.login_form, signed_in=False), methods=["GET"]),
            Route("/login", guarded(self.login, signed_in=False), methods=["POST"]),
            Route("/logout", guarded(self.logout, signed_in=False), methods=["POST"]),
            Route("/list/{kind}", guarded(self.listing), methods=["GET"]),
            Route("/r/{resource_id}", guarded(self.resource), methods=["GET"]),
            Route("/key/{key_id}", guarded(self.key), methods=["GET"]),
            Route("/audit", guarded(self.audit), methods=["GET"]),
            Route("/static/console.css", self.stylesheet, methods=["GET"]),
        ])

    async def stylesheet(self, _request: Request) -> Response:
        response = FileResponse(HERE / "static" / "console.css", media_type="text/css")
        _secure(response)
        return response

    async def login_form(self, request: Request, _viewer: None) -> Response:
        return self.page(request, "login.html", viewer=None, error=None)

    async def login(self, request: Request, _viewer: None) -> Response:
        form = await _form(request)
        principal = str(form.get("account") or form.get("access_key_id") or "")
        cookie = self.sessions.sign_in(principal, str(form.get("secret_access_key") or "") or None)
        if cookie is None:
            error = ("Unknown access key id or wrong secret." if self._gateway().auth.mode == "strict"
                     else "An account id is 12 digits.")
            return self.page(request, "login.html", status=401, viewer=None, error=error)
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        response.set_cookie(COOKIE, cookie, max_age=LIFETIME_SECONDS, path=PREFIX, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, _request: Request, _viewer: None) -> Response:
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    async def overview(self, request: Request, viewer: Viewer) -> Response:
        region = _region(request)

        def read() -> dict[str, Any]:
            with self.runtime.db.read() as conn:
                counts = {k: inventory.page(conn, k, viewer.account, region, 1, 1).total for k in inventory.KINDS}
                return {"counts": counts, "findings": posture.report(conn, viewer.account),
                        "regions": inventory.regions_of(conn, viewer.account)}
        data = await run_in_threadpool(read)
        return self.page(request, "overview.html", viewer=viewer, region=region, **data)

    async def listing(self, request: Request, viewer: Viewer) -> Response:
        kind = request.path_params["kind"]
        region = _region(request)
        if kind not in inventory.KINDS:
            return self.refused(request, viewer, f"There is no list of {kind}.")
        number = _int(request.query_params.get("page"), 1)

        def read() -> Any:
            with self.runtime.db.read() as conn:
                return inventory.page(conn, kind, viewer.account, region, number)
        result = await run_in_threadpool(read)
        return self.page(request, "list.html", viewer=viewer, region=region, kind=kind, result=result)

    async def resource(self, request: Request, viewer: Viewer) -> Response:
        resource_id = request.path_params["resource_id"]

        def read() -> tuple[Any, Any]:
            with self.runtime.db.read() as conn:
                e = explain_mod.explain(conn, resource_id, viewer.account)
                return e, lineage.neighbourhood(conn, resource_id, viewer.account)
        try:
            explanation, graph = await run_in_threadpool(read)
        except ServiceError:
            return self.refused(request, viewer, f"The resource {resource_id} does not exist in your account.")
        return self.page(request, "resource.html", viewer=viewer, region=explanation.region, e=explanation,
                         graph=graph, graph_svg=Markup(svg.render(graph, _href)))

    async def key(self, request: Request, viewer: Viewer) -> Response:
        key_id = request.path_params["key_id"]

        def read() -> Any:
            with self.runtime.db.read() as conn:
                key = res.key_by_id(conn, key_id)
                if key is None or key.account != viewer.account:
                    return None
                return (key, lineage.key_dependants(conn, key.arn), lineage.neighbourhood(conn, key.arn, viewer.account),
                        [f for f in posture.report(conn, viewer.account) if f.resource == key.arn])
        found = await run_in_threadpool(read)
        if found is None:
            return self.refused(request, viewer, f"The key {key_id} does not exist in your account.")
        key, dependants, graph, findings = found
        return self.page(request, "key.html", viewer=viewer, region=key.region, key=key, dependants=dependants,
                         findings=findings, graph=graph, graph_svg=Markup(svg.render(graph, _href)))

    async def audit(self, request: Request, viewer: Viewer) -> Response:
        key = (request.query_params.get("key") or "").strip() or None
        resource = (request.query_params.get("resource") or "").strip() or None
        data_dir = self.runtime.settings.data_dir
        records = await run_in_threadpool(trail.records, data_dir, account=viewer.account, key=key,
                                          resource=resource)
        return self.page(request, "audit.html", viewer=viewer, region=_region(request), records=records,
                         key=key or "", resource=resource or "")


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form (sign-in): parsed here, no multipart parser needed."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=8).items()}


def _href(node: Node) -> str | None:
    if node.foreign or node.kind == "datakey":
        return None
    if node.kind == "kmskey":
        return f"{PREFIX}/key/{node.id.rsplit('/', 1)[-1]}" if node.state != "Deleted" else None
    return f"{PREFIX}/r/{node.id}"


def _url(path: str, **query: Any) -> str:
    q = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{PREFIX}{path}" + (f"?{urlencode(q)}" if q else "")


def _region(request: Request) -> str:
    region = request.query_params.get("region") or DEFAULT_REGION
    return region if regions.is_known_region(region) else DEFAULT_REGION


def _int(value: str | None, default: int) -> int:
    return int(value) if value and value.isdigit() else default


def _cross_site(request: Request) -> bool:
    return request.headers.get("sec-fetch-site") == "cross-site"


def _same_origin(request: Request) -> bool:
    """A POST must come from a page of this console: its Origin (or, failing that, its
    Referer) names the host the request was sent to."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    return urlsplit(source).netloc == request.headers.get("host", "")


def _forbidden(message: str) -> Response:
    response = HTMLResponse(f"<!doctype html><title>Refused</title><p>{message}</p>", status_code=403)
    _secure(response)
    return response


def _secure(response: Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
