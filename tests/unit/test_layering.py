"""The design's one-way dependencies: crypto, model and names import no backend."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


def test_pure_modules_import_no_backend() -> None:
    code = ("import sys, keyops.crypto, keyops.model.keyring, keyops.model.names, keyops.model.usage; "
            "print(sorted(m for m in ('hvac', 'requests', 'pkcs11') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_resolve() -> None:
    import keyops
    from keyops.ops.front import Keyops

    assert keyops.Keyops is Keyops
    assert all(getattr(keyops, name) is not None for name in keyops.__all__)


# --- the whole import graph ----------------------------------------------------------------------------

#: Layers from the bottom up. A module imports (at run time) only modules of its own layer or below;
#: ``if TYPE_CHECKING:`` imports are for annotations and do not count.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("keyops.errors", "keyops.files", "keyops.model.names", "keyops.model.paths"),
    ("keyops.config", "keyops.auth", "keyops.crypto", "keyops.model", "keyops.declare"),
    ("keyops.backends",),
    ("keyops.wrappers",),
    ("keyops.hierarchy", "keyops.roots", "keyops.access"),
    ("keyops.ops", "keyops.audit"),
    ("keyops.serve",),
    ("keyops.kms", "keyops.api", "keyops.cli"),
    ("keyops.dev",),
)
#: The local stack is never imported by the library: only its command does.
DEV_IMPORTERS = ("keyops.cli.dev",)
PACKAGE = Path(__file__).resolve().parents[2] / "keyops"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST, known: set[str]) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    found.add(full if full in known else child.module)
            visit(child)

    visit(tree)
    return {name for name in found if name == "keyops" or name.startswith("keyops.")}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps = _runtime_imports(ast.parse(path.read_text(encoding="utf-8")), set(paths))
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".") and d != "keyops"}
    return graph


def _layer(module: str) -> int:
    best = -1, -1  # (length of the matching prefix, layer)
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = len(prefix), number
    assert best[1] >= 0, f"{module} is in no layer of LAYERS; add it"
    return best[1]


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, deps in sorted(_graph().items()):
        for dep in sorted(deps):
            if dep.startswith("keyops.dev") and not module.startswith("keyops.dev"):
                if module not in DEV_IMPORTERS:
                    wrong.append(f"{module} -> {dep} (the local stack is never imported by the library)")
            elif _layer(dep) > _layer(module):
                wrong.append(f"{module} (layer {_layer(module)}) -> {dep} (layer {_layer(dep)})")
    assert wrong == [], "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycle_inside_keyops() -> None:
    graph = _graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(graph.get(node, ())):
            if seen.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in seen:
                walk(dep, path + [dep])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            walk(start, [start])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
