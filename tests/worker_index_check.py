"""Index ``function_app.py`` with the Functions Python worker's own code, as the host does.

Run by ``tests/test_worker_index.py`` inside ``.venv-worker/``: a clean virtualenv on Python
>= 3.13 holding ``requirements.txt`` and ``azure-functions-runtime`` (the worker as a library)
and nothing else, i.e. what a deployment installs. Usage::

    .venv-worker/bin/python tests/worker_index_check.py APP_DIR

For each function the worker indexes, ``Registry().add_indexed_function`` runs the checks the
worker applies at load time (binding directions, parameter annotations, return types). The host
itself is not needed: those checks read only the ``BindingInfo`` enum values of the host protocol
(FunctionRpc.proto), given below. Then every module the app can import is imported, including
the imports inside function bodies (lazy imports) of the app's own modules, found statically from
``function_app`` and from the HTTP handlers its route declarations name, so a package missing
from ``requirements.txt`` fails here and not on the first invocation in Azure.

Prints one JSON object: ``functions`` (name -> "ok" or the error), ``declared`` (how many
functions the app's FunctionApp holds), ``imports`` (module -> "ok" or the error).
Exits 0 when everything loaded and imported, 1 otherwise. Imports nothing from ``tests/``.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace


class BindingInfo:
    """The ``BindingInfo`` enums of the host protocol, with the values FunctionRpc.proto gives."""

    # enum Direction { in = 0; out = 1; inout = 2; }  (``in`` is a Python keyword)
    out = 1
    inout = 2
    # enum DataType { undefined = 0; string = 1; binary = 2; stream = 3; }
    undefined = 0
    string = 1
    binary = 2
    stream = 3


setattr(BindingInfo, "in", 0)  # noqa: B010 - not a valid identifier
PROTOS = SimpleNamespace(BindingInfo=BindingInfo)

# Project packages whose sources are scanned for imports; anything else is a distribution.
PROJECT_PACKAGES = ("shared", "scoring", "function_app")


def _error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _module_source(app_dir: Path, module: str) -> Path | None:
    base = app_dir.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports_in(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, at any depth (function bodies included).

    ``from X import Y`` yields ``X.Y`` as well when ``X.Y`` turns out to be a module: the caller
    imports ``X`` and then tries ``X.Y``; names that are attributes are checked as attributes.
    Imports guarded by ``try: ... except ImportError`` are optional by intent and skipped.
    """
    tree = ast.parse(path.read_text(), str(path))
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            h.type is not None and "ImportError" in ast.unparse(h.type) for h in node.handlers
        ):
            for inner in node.body:
                guarded.update(id(n) for n in ast.walk(inner))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            found.update(f"{base}:{alias.name}" for alias in node.names)
    return found


def reachable_imports(app_dir: Path, roots: list[str]) -> list[str]:
    """Modules (and ``module:name`` pairs) reachable from ``roots`` through the app's code."""
    seen_project: set[str] = set()
    todo = list(roots)
    found: set[str] = set(roots)
    while todo:
        module = todo.pop()
        if module in seen_project:
            continue
        seen_project.add(module)
        path = _module_source(app_dir, module)
        if path is None:
            continue
        for item in _imports_in(path, module):
            found.add(item)
            target = item.split(":")[0]
            if target.split(".")[0] in PROJECT_PACKAGES:
                todo.append(target)
                # ``from shared import api``: api may be a module of the package.
                if ":" in item and item.split(":")[1] != "*":
                    todo.append(item.replace(":", "."))
                # A package's __init__ runs before its submodules.
                parts = target.split(".")
                todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(found)


def check_import(item: str) -> None:
    if ":" not in item:
        importlib.import_module(item)
        return
    module, name = item.split(":")
    imported = importlib.import_module(module)
    if name == "*" or hasattr(imported, name):
        return
    importlib.import_module(f"{module}.{name}")


def main(app_dir: str) -> int:
    app_path = Path(app_dir).resolve()
    sys.path.insert(0, str(app_path))  # the host puts the app's folder first, like this

    from azure_functions_runtime.bindings.meta import load_binding_registry
    from azure_functions_runtime.functions import Registry
    from azure_functions_runtime.loader import index_function_app

    report: dict = {"functions": {}, "declared": None, "imports": {}}
    ok = True
    try:
        load_binding_registry()  # what the worker does on WorkerInitRequest
        indexed = index_function_app(str(app_path / "function_app.py"))
    except Exception as exc:  # the whole index failed: the host would start with no function
        report["index_error"] = _error(exc)
        print(json.dumps(report))
        return 1
    # What the app declares, read from its FunctionApp's builders (get_functions() may not be
    # called twice: it registers names and would reject them as duplicates).
    report["declared"] = len(sys.modules["function_app"].app._function_builders)
    registry = Registry()
    for function in indexed:
        name = function.get_function_name()
        try:
            registry.add_indexed_function(function=function, protos=PROTOS)
            report["functions"][name] = "ok"
        except Exception as exc:
            report["functions"][name] = _error(exc)
            ok = False
    # The HTTP handlers are named in the route declarations ("module:function", imported on the
    # first call, not by an import statement): they and what they import are checked too.
    handlers = [
        route.handler for route in importlib.import_module("shared.routes").registered_routes()
    ]
    roots = ["function_app", *{handler.split(":")[0] for handler in handlers}]
    for item in sorted({*reachable_imports(app_path, roots), *handlers}):
        try:
            check_import(item)
            report["imports"][item] = "ok"
        except Exception as exc:
            report["imports"][item] = _error(exc)
            ok = False
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
