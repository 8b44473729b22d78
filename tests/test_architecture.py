"""The package's design rules as tests: the Lightning boundary, module and function sizes, no private imports, where methods live."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cam_callbacks"
CORE_SUBPACKAGES = ("functional", "engine", "methods", "capture", "metrics", "monitor", "render", "utils", "datasets")
LIGHTNING_ROOTS = ("pytorch_lightning", "lightning", "lightning_fabric")
MAX_MODULE_LINES = 460
MAX_FUNCTION_LINES = 60


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


def test_no_module_over_the_line_limit():
    sizes = {_rel(p): len(p.read_text(encoding="utf-8").splitlines()) for p in _sources(PACKAGE)}
    assert len(sizes) > 30
    offenders = {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not offenders, f"modules over {MAX_MODULE_LINES} lines: {offenders}"


def _code_lines(lines: List[str], node: ast.AST) -> int:
    """Non-blank, non-comment lines from ``def`` to the end of the function, minus its docstring's lines."""
    skip = set()
    body = node.body  # type: ignore[attr-defined]
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        skip = set(range(body[0].lineno, body[0].end_lineno + 1))
    count = 0
    for number in range(node.lineno, node.end_lineno + 1):  # type: ignore[attr-defined]  # decorators not counted
        text = lines[number - 1].strip()
        if number in skip or not text or text.startswith("#"):
            continue
        count += 1
    return count


def test_code_lines_counts_as_documented():
    source = '''def f(x):
    """Doc
    string."""
    # a comment

    y = x + 1  # trailing comment counts
    return y
'''
    node = ast.parse(source).body[0]
    assert _code_lines(source.splitlines(), node) == 3  # def, y = ..., return


def test_no_function_over_the_line_limit():
    offenders, measured = [], {}
    for path in _sources(PACKAGE):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in _statements(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = measured[f"{_rel(path)}:{node.name}"] = _code_lines(lines, node)
                if n > MAX_FUNCTION_LINES:
                    offenders.append(f"{_rel(path)}:{node.lineno} {node.name} ({n} lines)")
    assert len(measured) > 200 and "cam_callbacks/callbacks/cam_monitor.py:__init__" in measured  # methods and nested functions too
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines of code:\n" + "\n".join(offenders)


def _private_imports(path: Path, root: Path = ROOT) -> Iterator[str]:
    for node in _statements(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "cam_callbacks":
            private_parts = [part for part in node.module.split(".") if part.startswith("_") and not part.startswith("__")]
            names = [a.name for a in node.names if a.name.startswith("_") and not (a.name.startswith("__") and a.name.endswith("__"))]
            if private_parts or names:
                yield f"{path.relative_to(root)}:{node.lineno} from {node.module} import {', '.join(a.name for a in node.names)}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "cam_callbacks" and any(p.startswith("_") and not p.startswith("__") for p in parts):
                    yield f"{path.relative_to(root)}:{node.lineno} import {alias.name}"


def test_no_private_imports_from_the_package():
    folders = [PACKAGE, ROOT / "tests", ROOT / "benchmarks", ROOT / "examples"]
    scanned = list(_sources(*folders))
    assert any(p.name == "test_architecture.py" for p in scanned) and any(p.parent.name == "cam_callbacks" for p in scanned)
    offenders = [hit for path in scanned for hit in _private_imports(path)]
    assert not offenders, "private names imported from cam_callbacks:\n" + "\n".join(offenders)


def test_private_import_scan_finds_them(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from cam_callbacks.engine.caches import _TAILS\nfrom cam_callbacks import __version__, explain\n"
        "import cam_callbacks._hidden\nfrom cam_callbacks.utils._x import y\n"
    )
    hits = list(_private_imports(sample, root=tmp_path))
    assert [h.split()[0] for h in hits] == ["sample.py:1", "sample.py:3", "sample.py:4"], hits


def test_every_registered_method_lives_in_the_methods_layer():
    import cam_callbacks as cc

    homes = {name: cc.get_method(name).fn.__module__ for name in cc.available_methods()}
    assert {"gradcam", "reciprocam", "eigencam", "saliency"} <= set(homes)
    offenders = {name: module for name, module in homes.items() if not module.startswith("cam_callbacks.methods.")}
    assert not offenders, f"methods defined outside cam_callbacks/methods/: {offenders}"
    for module in set(homes.values()):
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
