"""The package's design as tests: the Lightning boundary, the layer order, no import cycles, the public surface.

Size is not a design rule here (a module is as long as its one job needs); what is protected is the shape of the
package that the docs describe (``docs/contributing.md``):

- only ``cam_callbacks/callbacks/`` imports Lightning, and importing the rest never does;
- the layers import downwards only: ``utils -> methods -> capture -> metrics -> engine -> monitor -> render ->
  callbacks`` (``functional`` sits on the engine; ``datasets`` stands alone on ``utils``); so there is no import
  cycle between subpackages;
- the public API is the top-level ``__all__`` (and ``cam_callbacks.datasets``); internal modules export nothing
  with ``__all__``; every registered method lives in ``cam_callbacks/methods/``;
- no code was squeezed to meet a number: no ``# fmt: skip`` in the package.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cam_callbacks"
LIGHTNING_ROOTS = ("pytorch_lightning", "lightning", "lightning_fabric")
#: The layers, bottom up: a module may import its own layer and the layers below it, never one above.
LAYERS = ("utils", "methods", "capture", "metrics", "engine", "monitor", "render", "callbacks")
#: Top-level modules and standalone subpackages: where each sits (the index of the highest layer it may import).
PLACED = {"functional": LAYERS.index("engine"), "datasets": LAYERS.index("utils")}
CORE_SUBPACKAGES = tuple(layer for layer in LAYERS if layer != "callbacks") + ("functional", "datasets")
PUBLIC = {
    "CAMMonitor", "ExplainOptions", "ImageStyle", "ShortcutAlarm", "ThresholdAlarm", "TokenGrid", "available_methods",
    "explain", "faithfulness", "find_shortcuts", "perturbation_scores", "plot_maps", "register_method", "show_maps",
}  # fmt: skip


def _sources(*folders: Path) -> Iterator[Path]:
    for folder in folders:
        if folder.is_dir():
            yield from sorted(p for p in folder.rglob("*.py") if ".venv" not in p.parts)


@functools.lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _statements(node: ast.AST) -> Iterator[ast.AST]:
    """Every statement under ``node``, nested ones included (imports are statements: no need to visit expressions)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
            yield child
            yield from _statements(child)


def _imported_modules(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _unit(path: Path) -> str:
    """The subpackage (or top-level module) a package file belongs to: ``engine``, ``functional``, ``__init__``."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0][: -len(".py")]


def _level(unit: str) -> int:
    return LAYERS.index(unit) if unit in LAYERS else PLACED[unit]


def _package_imports() -> Dict[str, Set[Tuple[str, str]]]:
    """``{unit: {(imported unit, "file:line")}}`` for the imports between units of the package."""
    edges: Dict[str, Set[Tuple[str, str]]] = {}
    for path in _sources(PACKAGE):
        unit = _unit(path)
        for line, module in _imported_modules(_tree(path)):
            parts = module.split(".")
            if parts[0] == "cam_callbacks" and len(parts) > 1 and parts[1] != unit:
                edges.setdefault(unit, set()).add((parts[1], f"{_rel(path)}:{line}"))
    return edges


# ---------------------------------------------------------------- the Lightning boundary


@pytest.mark.slow  # a fresh interpreter importing torch: 4-7 s on the 2-core machine
def test_core_imports_no_lightning():
    """Importing the package and every non-callback subpackage in a fresh interpreter imports no Lightning module."""
    script = f"""
import importlib, json, sys
import cam_callbacks
for name in {CORE_SUBPACKAGES!r}:
    importlib.import_module("cam_callbacks." + name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {LIGHTNING_ROOTS!r})))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("cam_callbacks."))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    assert done.returncode == 0, done.stderr
    lightning, imported = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert {f"cam_callbacks.{name}" for name in CORE_SUBPACKAGES} <= set(imported)
    assert "cam_callbacks.callbacks" not in imported
    assert lightning == [], f"importing the core imported Lightning modules: {lightning[:10]}"


def test_only_the_callbacks_layer_imports_lightning():
    offenders = []
    for path in _sources(PACKAGE):
        if (PACKAGE / "callbacks") in path.parents:
            continue
        for line, module in _imported_modules(_tree(path)):
            if module.split(".")[0] in LIGHTNING_ROOTS:
                offenders.append(f"{_rel(path)}:{line} imports {module}")
    assert not offenders, "Lightning imported outside cam_callbacks/callbacks/:\n" + "\n".join(offenders)


def test_the_callbacks_layer_does_import_lightning():
    """The scan above finds Lightning imports where they are (it would pass vacuously if it found none anywhere)."""
    found = [m for p in _sources(PACKAGE / "callbacks") for _, m in _imported_modules(_tree(p)) if m.split(".")[0] in LIGHTNING_ROOTS]
    assert "pytorch_lightning" in found


# ---------------------------------------------------------------- the layer order, hence no cycles


def test_every_unit_of_the_package_has_a_place_in_the_layer_order():
    units = {_unit(p) for p in _sources(PACKAGE)} - {"__init__"}
    assert units == set(LAYERS) | set(PLACED), f"place these in LAYERS or PLACED (and in the docs): {units ^ (set(LAYERS) | set(PLACED))}"


def test_layers_import_downwards_only():
    offenders = []
    for unit, imports in _package_imports().items():
        if unit == "__init__":
            continue  # the top level re-exports the public API from every layer
        for target, where in imports:
            # nothing imports the top level (it imports everything) nor the generated data (examples use it, the package not)
            if target in ("__init__", "datasets") or _level(target) > _level(unit):
                offenders.append(f"{where}: {unit} imports {target}")
    assert not offenders, "imports against the layer order " + " -> ".join(LAYERS) + ":\n" + "\n".join(sorted(offenders))


def test_no_import_cycle_between_subpackages():
    """A direct check of the graph (the order above implies it; this says which cycle, should the order be edited)."""
    graph = {unit: {target for target, _ in imports} for unit, imports in _package_imports().items() if unit != "__init__"}
    visiting: List[str] = []
    done: Set[str] = set()

    def visit(unit: str) -> None:
        if unit in visiting:
            cycle = visiting[visiting.index(unit) :] + [unit]
            raise AssertionError("import cycle between subpackages: " + " -> ".join(cycle))
        if unit in done:
            return
        visiting.append(unit)
        for target in sorted(graph.get(unit, ())):
            visit(target)
        visiting.pop()
        done.add(unit)

    for unit in sorted(graph):
        visit(unit)
    assert len(done) >= len(LAYERS)


def test_the_layer_scan_reads_the_imports():
    """The scan sees ``from cam_callbacks.<unit> import`` statements (the checks above would pass vacuously otherwise)."""
    edges = {unit: {target for target, _ in imports} for unit, imports in _package_imports().items()}
    assert {"capture", "methods", "utils"} <= edges["engine"] and "monitor" in edges["callbacks"]
    assert _level("render") > _level("engine") and _level("functional") == _level("engine")


# ---------------------------------------------------------------- the public surface


def test_the_public_api_is_the_top_level_all():
    import cam_callbacks as cc

    assert set(cc.__all__) == PUBLIC
    for name in cc.__all__:
        assert getattr(cc, name) is not None
    assert isinstance(cc.__version__, str) and cc.__version__


def test_internal_modules_export_nothing_with_all():
    """``__all__`` is the public contract: only the top level and the public ``cam_callbacks.datasets`` have one."""
    offenders = []
    for path in _sources(PACKAGE):
        if path == PACKAGE / "__init__.py" or (PACKAGE / "datasets") in path.parents:
            continue
        for node in _tree(path).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                offenders.append(f"{_rel(path)}:{node.lineno}")
    assert not offenders, "internal modules with __all__ (make the names private by convention, or public at the top level):\n" + "\n".join(offenders)


def test_every_registered_method_lives_in_the_methods_layer():
    import cam_callbacks as cc
    from cam_callbacks.methods.registry import get_method

    homes = {name: get_method(name).fn.__module__ for name in cc.available_methods()}
    assert {"gradcam", "reciprocam", "eigencam", "saliency"} <= set(homes)
    offenders = {name: module for name, module in homes.items() if not module.startswith("cam_callbacks.methods.")}
    assert not offenders, f"methods defined outside cam_callbacks/methods/: {offenders}"
    for module in set(homes.values()):
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


# ---------------------------------------------------------------- no code squeezed to meet a number


def test_no_formatter_escapes_in_the_package():
    offenders = [f"{_rel(p)}:{n}" for p in _sources(PACKAGE) for n, line in enumerate(p.read_text().splitlines(), 1) if "fmt: skip" in line]
    assert not offenders, "code kept out of the formatter (format it, or split it by concept):\n" + "\n".join(offenders)


@pytest.mark.slow  # a fresh interpreter importing torch
def test_importing_the_package_registers_every_method_module():
    """Every ``register_method`` in ``cam_callbacks/methods/`` takes effect on ``import cam_callbacks`` alone (a family
    module that ``methods/__init__.py`` forgets would register only when some test happens to import it)."""
    declared = 0
    for path in _sources(PACKAGE / "methods"):
        for node in _tree(path).body:
            if isinstance(node, ast.FunctionDef):
                declared += sum(
                    isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register_method" for d in node.decorator_list
                )
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "register_method":
                declared += 1
    script = "import cam_callbacks as cc; print(len(cc.available_methods()))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    assert done.returncode == 0, done.stderr
    assert declared >= 26 and int(done.stdout.strip().splitlines()[-1]) == declared
