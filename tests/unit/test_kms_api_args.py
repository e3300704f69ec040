"""The typed arguments of the KMS operations (ebscrypt/engines/kms/api.py) against the
KMS model: every field a handler fills names a member of its operation's input, so a
misspelt field cannot silently stay None; and the request members reach the engine
unchanged (R-WIRE: the engine sees what the codec parsed)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from ebscrypt.engines.kms import api
from ebscrypt.services import registry
from ebscrypt.wire.codec import required, service_model

KMS_SERVICES = Path(__file__).resolve().parents[2] / "ebscrypt" / "services" / "kms"


def _handlers() -> list[tuple[str, str]]:
    """(operation, api class) of every ``@operation("kms", …)`` handler, read from source."""
    found = []
    for path in sorted(KMS_SERVICES.glob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            ops = [d.args[1].value for d in fn.decorator_list
                   if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "operation"]
            calls = [c for c in ast.walk(fn) if isinstance(c, ast.Call)
                     and isinstance(c.func, ast.Attribute) and c.func.attr == "from_members"]
            for op in ops:
                assert len(calls) == 1, f"{op}: one from_members call"
                found.append((op, calls[0].args[0].attr))
    return found


HANDLERS = _handlers()


def test_every_kms_operation_has_a_typed_handler() -> None:
    assert sorted(op for op, _ in HANDLERS) == registry.operations("kms")
    assert len(HANDLERS) == 41


@pytest.mark.parametrize("operation,args_class", HANDLERS)
def test_fields_name_members_of_the_operation(operation: str, args_class: str) -> None:
    members = set(service_model("kms").operation_model(operation).input_shape.members)
    cls = getattr(api, args_class)
    for f in dataclasses.fields(cls):
        member = api.member_name(f.name)
        # a shared class may hold a member one of its operations lacks (Verify's Signature
        # in Sign's arguments): then it is optional and stays None for that operation
        assert member in members or f.default is None, f"{operation}: {member} is not a member"
    shape = service_model("kms").operation_model(operation).input_shape
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING:  # the codec refuses a request without it
            assert required.is_required("kms", shape, api.member_name(f.name)), f"{operation}: {f.name} is optional"


def test_from_members_keeps_values_and_leaves_absent_ones_none() -> None:
    args = api.from_members(api.Encrypt, {"KeyId": "alias/x", "Plaintext": b"p", "GrantTokens": ["t"],
                                          "Unrelated": 1})
    assert args == api.Encrypt(key_id="alias/x", plaintext=b"p", grant_tokens=["t"])
    assert args.encryption_context is None and args.dry_run is None
