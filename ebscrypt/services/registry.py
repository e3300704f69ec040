"""The table from (service, operation) to handler, filled by the ``@operation`` decorator."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

from ebscrypt.context import RequestContext

Handler = Callable[[RequestContext, dict[str, Any]], dict[str, Any]]

_HANDLERS: dict[tuple[str, str], Handler] = {}
_INLINE: set[Handler] = set()
_loaded = False


def operation(service: str, name: str, *, inline: bool = False) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the handler of ``service``'s operation ``name`` (model spelling).

    ``inline``: the handler's common path neither writes nor waits, so the gateway may run
    it on the event loop (no thread hand-off; see :mod:`ebscrypt.blocking`)."""

    def register(fn: Handler) -> Handler:
        key = (service, name)
        if key in _HANDLERS and _HANDLERS[key] is not fn:
            raise RuntimeError(f"two handlers for {service}:{name}")
        _HANDLERS[key] = fn
        if inline:
            _INLINE.add(fn)
        return fn

    return register


def load_all() -> None:
    """Import every module under ``ebscrypt.services`` so their decorators run."""
    global _loaded
    if _loaded:
        return
    import ebscrypt.services as pkg

    for info in pkgutil.walk_packages(pkg.__path__, prefix="ebscrypt.services."):
        importlib.import_module(info.name)
    _loaded = True


def handler_for(service: str, name: str) -> Handler | None:
    load_all()
    return _HANDLERS.get((service, name))


def operations(service: str) -> list[str]:
    load_all()
    return sorted(op for svc, op in _HANDLERS if svc == service)


def is_inline(handler: Handler) -> bool:
    """Registered with ``inline=True``."""
    return handler in _INLINE
