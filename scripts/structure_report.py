#!/usr/bin/env python3
"""Structure figures of the ``ebscrypt`` package (issue 11's closing-note list).

Run from the repository root: ``python3 scripts/structure_report.py [--details]``.
Standard library only (``ast``): nothing is imported from the package, so it measures
any checkout, even one whose code does not import.

What is counted, and how:

lines per layer
    Physical lines of the ``.py`` files of each layer: ``wire`` (``wire/``), ``services``,
    ``engines``, ``storage``, ``domain``, ``console``, ``datapath``, and ``cli/app`` (the
    top-level modules: ``app.py``, ``cli.py``, ``runtime.py``, ``errors.py``, …).

engine functions taking a wire dict
    A function or method under ``engines/`` with a parameter named ``params``, ``p`` or
    ``request`` (the names the handlers pass their parsed request under) annotated as a
    ``dict``/``Mapping`` of ``str`` to ``Any`` (``| None`` allowed), or named ``params``
    with no annotation. Other ``dict[str, Any]`` parameters (rows, checkpoints, stored
    JSON documents) are not wire dicts and are not counted. Target: 0.

``db.begin``/``db.read`` calls in services
    Calls ``<anything>.db.begin(...)`` / ``<anything>.db.read(...)`` in ``services/``:
    a service opening a transaction itself. Target: 0.

import cycles (module level)
    The strongly connected components (of more than one module) of the graph of module-level imports between ``ebscrypt`` modules. Imports
    under ``if TYPE_CHECKING:`` do not run and are left out. ``from pkg import name``
    is an edge to ``pkg.name`` when that is a module, to ``pkg`` otherwise (so a module
    importing its own package's face, whose ``__init__`` imports it back, is a cycle).

lazy imports
    ``import``/``from … import`` of an ``ebscrypt`` module inside a function body (the
    usual way to dodge a cycle). Target: 0.

functions over 60 lines
    Functions and methods whose ``def`` line to last line span more than 60 lines.

inline errors
    Calls ``ServiceError(...)`` (and the KMS engine's former ``kms_error(...)``) that
    spell an error's code where it is raised, instead of raising a typed error of
    ``ebscrypt/errors.py``; and the string literals spelling "The request must contain
    the parameter" outside ``errors.py`` (the :class:`MissingParameter` template).

The repeated-code pairs of a duplicate-code finder are measured outside this script.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = "ebscrypt"
LAYERS = ("wire", "services", "engines", "storage", "domain", "console", "datapath")
WIRE_NAMES = {"params", "p", "request"}
LONG_FUNCTION = 60


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    out: dict[str, Path] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "cli/app"


def _is_wire_dict(arg: ast.arg) -> bool:
    if arg.arg not in WIRE_NAMES:
        return False
    if arg.annotation is None:
        return arg.arg == "params"
    text = ast.unparse(arg.annotation).replace(" ", "")
    for base in ("dict[str,Any]", "Mapping[str,Any]"):
        if text in (base, base + "|None", "Optional[" + base + "]"):
            return True
    return False


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: the top level and its plain
    ``if``/``try`` blocks, not function bodies and not ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The ebscrypt modules an import statement loads (by the rule in the docstring)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                name = alias.name
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.add(name)
        return found
    if node.level:
        base_parts = module.split(".") if is_package else module.split(".")[:-1]
        if node.level > 1:
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
        return found
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            found.add(sub)
        elif base in known:
            found.add(base)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    result.append(sorted(component))
    return sorted(result)


def measure(root: Path) -> dict[str, object]:
    modules = _modules(root)
    known = set(modules)
    lines: dict[str, int] = defaultdict(int)
    wire_dict: list[str] = []
    transactions: list[str] = []
    lazy: list[str] = []
    long_functions: list[str] = []
    inline_errors: list[str] = []
    missing_texts: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        text = path.read_text(encoding="utf-8")
        lines[_layer(module)] += len(text.splitlines())
        tree = ast.parse(text, filename=str(path))
        rel = path.relative_to(root)
        is_package = path.name == "__init__.py"
        for node in _module_level_imports(tree):
            graph[module] |= _targets(node, module, is_package, known) - {module}
        in_engines = module.startswith(PACKAGE + ".engines")
        in_services = module.startswith(PACKAGE + ".services")
        for fn in _functions(tree):
            span = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if span > LONG_FUNCTION:
                long_functions.append(f"{rel}:{fn.lineno} {fn.name} ({span} lines)")
            args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
            if in_engines and any(_is_wire_dict(a) for a in args):
                wire_dict.append(f"{rel}:{fn.lineno} {fn.name}")
            for inner in ast.walk(fn):
                if isinstance(inner, (ast.Import, ast.ImportFrom)) and _targets(inner, module, is_package, known):
                    lazy.append(f"{rel}:{inner.lineno} in {fn.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name in ("ServiceError", "kms_error") and (
                    name == "kms_error" or any(k.arg == "code" for k in node.keywords)
                ):
                    inline_errors.append(f"{rel}:{node.lineno}")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "The request must contain the parameter" in node.value
                and path.name != "errors.py"
            ):
                missing_texts.append(f"{rel}:{node.lineno}")
        if in_services:
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("begin", "read")
                    and isinstance(node.func.value, ast.Attribute)
                    and node.func.value.attr == "db"
                ):
                    transactions.append(f"{rel}:{node.lineno} db.{node.func.attr}")
    # A nested function's imports are reported once (by its innermost function).
    lazy = sorted(set(lazy), key=lambda s: (s.split(":")[0], int(s.split(":")[1].split()[0])))
    seen_lines: dict[str, str] = {}
    for entry in lazy:
        seen_lines.setdefault(entry.split(" in ")[0], entry)
    lazy = list(seen_lines.values())
    cycles = _cycles(graph)
    return {
        "lines": {layer: lines.get(layer, 0) for layer in (*LAYERS, "cli/app")},
        "wire_dict": wire_dict,
        "transactions": transactions,
        "cycles": cycles,
        "lazy": lazy,
        "long_functions": long_functions,
        "inline_errors": inline_errors,
        "missing_texts": missing_texts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=".", help="repository root (default: current directory)")
    parser.add_argument("--details", action="store_true", help="list every item counted")
    args = parser.parse_args(argv)
    figures = measure(Path(args.root))
    lines = figures["lines"]
    assert isinstance(lines, dict)
    print("lines per layer:")
    for layer, count in lines.items():
        print(f"  {layer:<10} {count:>6}")
    print(f"  {'total':<10} {sum(lines.values()):>6}")
    rows = [
        ("engine functions taking a wire dict", "wire_dict"),
        ("db.begin/db.read calls in services", "transactions"),
        ("import cycles (module level, SCCs)", "cycles"),
        ("lazy imports of ebscrypt modules", "lazy"),
        (f"functions over {LONG_FUNCTION} lines", "long_functions"),
        ("inline ServiceError(code=...) calls", "inline_errors"),
        ('"The request must contain the parameter" texts', "missing_texts"),
    ]
    for label, key in rows:
        items = figures[key]
        assert isinstance(items, list)
        print(f"{label}: {len(items)}")
        if args.details:
            for item in items:
                print(f"    {' -> '.join(item) if isinstance(item, list) else item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
