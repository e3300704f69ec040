"""Requests a web page could have made: refused unless the operator trusts that page.

In dev auth nothing is signed, so without this check any page open in the user's
browser could drive the service: an ``<img src="http://127.0.0.1:4566/?Action=…">``
runs a GET, an auto-submitted form runs a POST, and a name the attacker controls that
resolves to 127.0.0.1 (DNS rebinding) even lets the page read the responses. Browsers
mark such requests, and SDKs/CLIs never do, so the check costs them nothing:

- ``Host`` must be a name the server was started for: the loopback names, the
  ``--host`` value, and every ``--allowed-host`` (a load balancer's name). A rebinding
  page sends its own name here. When the server binds a wildcard address
  (``0.0.0.0``/``::``) any IP literal is also accepted: an IP cannot be rebound.
- ``Origin`` (sent by browsers on every cross-origin POST and on CORS requests) must be
  the server's own origin or one listed with ``--cors-origin``.
- ``Sec-Fetch-Site: cross-site`` or ``same-site`` without a trusted ``Origin`` (an image,
  a script tag, a link followed from another page on the machine) is refused.
- A ``Referer`` of another origin is refused too: browsers older than fetch metadata
  still send it on an ``<img>`` GET; SDKs and CLIs never send one.

A listed ``--cors-origin`` gets real CORS: preflights are answered and responses carry
``Access-Control-Allow-Origin``, so a browser app on that origin can use the service.
Pure functions over lower-cased header dicts; the ASGI app renders refusals.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_WILDCARD_BINDS = {"0.0.0.0", "::", ""}

# What a browser app may read from a response: the ids and error headers the SDKs parse.
_EXPOSED = "x-amzn-RequestId, x-amz-request-id, x-amzn-ErrorType, x-amz-id-2, Date, Content-Length"
_METHODS = "GET, POST, PUT, DELETE, HEAD, PATCH"


@dataclass(frozen=True)
class OriginPolicy:
    """Which ``Host`` names and browser origins this server accepts."""

    allowed_hosts: frozenset[str]
    cors_origins: frozenset[str]
    any_ip_literal: bool = False  # bound to a wildcard address

    @classmethod
    def for_server(
        cls, bind_host: str, allowed_hosts: tuple[str, ...] = (), cors_origins: tuple[str, ...] = ()
    ) -> "OriginPolicy":
        names = {n.lower() for n in LOOPBACK_NAMES}
        wildcard = bind_host.strip("[]") in _WILDCARD_BINDS
        if not wildcard:
            names.add(bind_host.strip("[]").lower())
        names.update(h.lower() if h == "*" else host_name(h) for h in allowed_hosts)
        return cls(
            allowed_hosts=frozenset(names),
            cors_origins=frozenset(o.rstrip("/").lower() for o in cors_origins),
            any_ip_literal=wildcard,
        )


def host_name(header: str) -> str:
    """The name part of a ``Host`` header: no port, no IPv6 brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header[1:]
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header  # a bare name, or a bare IPv6 literal


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def refusal(policy: OriginPolicy, headers: Mapping[str, str]) -> str | None:
    """Why the request must be refused (a message for the caller), or None to serve it."""
    host = headers.get("host")
    if host is not None:
        name = host_name(host)
        if not (name in policy.allowed_hosts or "*" in policy.allowed_hosts or (policy.any_ip_literal and _is_ip(name))):
            return (
                f"The Host header {host!r} is not a name this server was started for "
                f"(DNS rebinding protection). Start it with --allowed-host {name} to serve that name."
            )
    origin = headers.get("origin")
    if origin is not None:
        if trusted_origin(policy, origin) or _same_origin(origin, host):
            return None
        return (
            f"Requests from the web page at {origin!r} are refused (cross-site request protection). "
            f"Start the server with --cors-origin {origin} to allow that page."
        )
    referer = headers.get("referer")
    if referer is not None:
        parts = urlsplit(referer)
        referer_origin = f"{parts.scheme}://{parts.netloc}"
        if not (trusted_origin(policy, referer_origin) or _same_origin(referer_origin, host)):
            return (
                f"Requests from the web page at {referer_origin!r} are refused (cross-site request protection). "
                f"Start the server with --cors-origin {referer_origin} to allow that page."
            )
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return (
            "Requests a browser makes on behalf of another site are refused (cross-site request protection; "
            f"Sec-Fetch-Site: {site})."
        )
    return None


def trusted_origin(policy: OriginPolicy, origin: str) -> bool:
    return origin.rstrip("/").lower() in policy.cors_origins


def _same_origin(origin: str, host: str | None) -> bool:
    if host is None:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    return method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers


def preflight_headers(policy: OriginPolicy, headers: Mapping[str, str]) -> list[tuple[str, str]] | None:
    """The headers answering a CORS preflight from a trusted origin; None: refuse it."""
    origin = headers.get("origin", "")
    if not trusted_origin(policy, origin):
        return None
    out = cors_headers(policy, headers)
    out += [("Access-Control-Allow-Methods", _METHODS), ("Access-Control-Max-Age", "600")]
    requested = headers.get("access-control-request-headers")
    if requested:
        # SigV4 signing needs the SDK's own headers (authorization, x-amz-*, amz-sdk-*).
        out.append(("Access-Control-Allow-Headers", requested))
    return out


def cors_headers(policy: OriginPolicy, headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Headers letting a trusted origin's page read a response; none for anyone else."""
    origin = headers.get("origin")
    if origin is None or not trusted_origin(policy, origin):
        return []
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Expose-Headers", _EXPOSED),
        ("Vary", "Origin"),
    ]
