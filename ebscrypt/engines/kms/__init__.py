"""KMS engine: key store (material wrapped by a root key), envelope encryption, key
policies and grants, audit trail. See :mod:`ebscrypt.engines.kms.engine`."""

from __future__ import annotations

from ebscrypt.context import Runtime
from ebscrypt.engines.kms.engine import KeyEngine, KeyInfo

__all__ = ["KeyEngine", "KeyInfo", "open_engine"]


def open_engine(runtime: Runtime) -> KeyEngine:
    """The KMS engine of ``runtime`` (``runtime.kms``): loads/creates the root key and
    destroys keys whose deletion waiting period has passed."""
    engine = KeyEngine(runtime)
    engines = getattr(runtime, "engines", None)
    if isinstance(engines, dict):
        engines["kms"] = engine  # reachable as runtime.kms even before build_runtime assigns it
    return engine
