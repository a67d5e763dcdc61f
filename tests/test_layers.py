"""Imports only point down the layers of fedray, written once here (as dp_accounting's build
files declare their dependencies).

A module may import its own package and any layer below its own; packages that share a layer
are independent and import nothing of each other. `mechanisms/` and `strategies/` (privacy and
server update rules) import nothing of the engine, and `common` imports nothing of fedray.
Imports inside functions and under `TYPE_CHECKING` count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Top to bottom; packages in one tuple share a layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("reports",),
    ("engine.app",),
    ("engine.runtime",),
    ("engine.plan",),
    ("engine.aggregation",),
    ("engine.training", "engine.scheduling"),
    ("engine.population",),
    ("mechanisms", "strategies"),
    ("common",),
)
TOP_LEVEL = ("reports", "engine", "mechanisms", "strategies", "common")


def _package(module: str) -> str | None:
    """The layered package `module` belongs to, or None (the `engine` namespace itself)."""
    for layer in LAYERS:
        for package in layer:
            if module == package or module.startswith(package + "."):
                return package
    return None


def _rank(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every fedray import in the file, wherever it is."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "engine":  # `from engine import app`: the subpackages named
                yield from ((node.lineno, f"engine.{alias.name}") for alias in node.names)
            else:
                yield node.lineno, node.module


def violations(root: Path) -> list[str]:
    """Every import under `root` that points up or sideways, as 'file:line: a -> b (why)'."""
    found = []
    for top in TOP_LEVEL:
        for path in sorted((root / top).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            source = _package(module)
            if source is None:
                continue
            for line, imported in _imports(path):
                target = _package(imported)
                if target is None or target == source:
                    continue
                if _rank(target) <= _rank(source):
                    why = "same layer" if _rank(target) == _rank(source) else "upward"
                    where = path.relative_to(root)
                    found.append(f"{where}:{line}: {source} -> {target} ({why})")
    return found


def private_imports(root: Path) -> list[str]:
    """Every `from X import _name` where X is outside the importer's package (tests, scripts
    and every package count), as 'file:line: module._name'."""
    found = []
    for top in (*TOP_LEVEL, "scripts", "tests"):
        for path in sorted((root / top).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                    continue
                if node.module.split(".")[0] not in TOP_LEVEL:
                    continue
                same = _package(node.module) is not None and _package(node.module) == _package(
                    module
                )
                for alias in node.names:
                    if alias.name.startswith("_") and not same:
                        found.append(f"{path.relative_to(root)}:{node.lineno}: {alias.name}")
    return found


def test_nothing_imports_a_private_name_across_packages() -> None:
    assert private_imports(ROOT) == []


def test_every_package_is_in_a_layer() -> None:
    packages = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL
        for init in (ROOT / top).glob("*/__init__.py")
    }
    packages |= {top for top in TOP_LEVEL if top != "engine"}
    unlayered = sorted(p for p in packages if _package(p) is None)
    assert unlayered == []


def test_imports_only_point_down() -> None:
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        (
            "engine/scheduling/clock.py",
            "from engine.runtime import Simulation",
            "engine.scheduling -> engine.runtime (upward)",
        ),
        (
            "engine/training/client.py",
            "import engine.scheduling.ledger",
            "engine.training -> engine.scheduling (same layer)",
        ),
        ("mechanisms/gaussian.py", "from engine.plan import Experiment", "(upward)"),
        ("common/rng.py", "    from mechanisms import base", "common -> mechanisms (upward)"),
        ("strategies/fedavg.py", "from engine import population", "(upward)"),
    ],
)
def test_an_upward_import_is_reported(
    tmp_path: Path, module: str, line: str, expected: str
) -> None:
    for top in TOP_LEVEL:
        for path in (ROOT / top).rglob("*.py"):
            copy = tmp_path / path.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text())
    target = tmp_path / module
    body = f"def _f() -> None:\n{line}\n" if line.startswith(" ") else f"{line}\n"
    target.write_text(target.read_text() + "\n" + body)
    found = violations(tmp_path)
    assert len(found) == 1 and expected in found[0], found
