"""The package layout is the architecture: imports go down the layers, never in a cycle.

``lint-imports`` (the contracts in ``pyproject.toml``) checks the layers on the import
graph. These tests add what it does not model: Python runs ``a/b/__init__.py`` when
``a.b.c`` is imported, so a package's ``__init__`` counts as imported too; library modules
never import the top-level ``gradlens`` namespace; the old module paths stay thin.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import tomllib

import gradlens

PACKAGE = Path(gradlens.__file__).parent
ROOT = PACKAGE.parent
OLD_PATHS = ("data", "training", "summary", "recorder", "outputs", "extract", "selection")
FACES = {"gradlens", "gradlens.__main__"} | {f"gradlens.{name}" for name in OLD_PATHS}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(name: str) -> set[str]:
    """Every gradlens module ``name`` imports, anywhere in its file (deferred imports and
    ``if TYPE_CHECKING:`` blocks included), with the packages whose ``__init__`` Python
    runs on the way (not the root package)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES or target == "gradlens":
                found.add(target)
    expanded = set()
    for target in found:
        parts = target.split(".")
        expanded |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    # the packages that contain ``name`` have run already when it is imported
    parts = name.split(".")
    ancestors = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return (expanded & set(MODULES)) - ancestors


@cache
def layer_of() -> dict[str, int]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    ranks: dict[str, int] = {}
    for rank, layer in enumerate(reversed(contract["layers"])):
        for member in layer.replace(":", "|").split("|"):
            ranks[f"gradlens.{member.strip()}"] = rank
    return ranks


def rank(name: str) -> int | None:
    parts = name.split(".")
    for i in range(len(parts), 1, -1):
        found = layer_of().get(".".join(parts[:i]))
        if found is not None:
            return found
    return None


LIBRARY = sorted(set(MODULES) - FACES)


def test_every_library_module_is_in_a_layer():
    assert [name for name in LIBRARY if rank(name) is None] == []


@pytest.mark.parametrize("name", LIBRARY)
def test_imports_go_down_the_layers_counting_package_inits(name):
    upward = [
        target
        for target in sorted(imported_names(name))
        if target not in FACES and rank(target) > rank(name)  # type: ignore[operator]
    ]
    assert upward == [], f"{name} imports a higher layer"


def reexported_imports(name: str) -> list[str]:
    """The names ``name`` imports from another package's ``__init__`` that are not
    submodules: names that package re-exports from the module that defines them."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
        if source in MODULES and MODULES[source].name == "__init__.py" and source != package:
            found += [
                f"{source}.{alias.name}"
                for alias in node.names
                if f"{source}.{alias.name}" not in MODULES
            ]
    return found


@pytest.mark.parametrize("name", LIBRARY)
def test_library_modules_import_names_from_the_module_that_defines_them(name):
    assert reexported_imports(name) == []


@pytest.mark.parametrize("name", LIBRARY)
def test_library_modules_never_import_the_gradlens_namespace(name):
    assert "gradlens" not in imported_names(name), (
        f"{name} imports gradlens/__init__.py; import from the module that defines the name"
    )


def test_no_import_cycle_between_modules_counting_package_inits():
    graph = {name: imported_names(name) - FACES for name in LIBRARY}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in LIBRARY:
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("old", OLD_PATHS)
def test_an_old_module_path_is_a_thin_re_export(old):
    module = importlib.import_module(f"gradlens.{old}")
    assert module.__all__
    assert all(hasattr(module, name) for name in module.__all__)
    # a re-export defines nothing of its own
    tree = ast.parse(MODULES[f"gradlens.{old}"].read_text())
    assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]


def test_functions_that_share_a_name_with_a_module_stay_functions():
    before = {name: getattr(gradlens, name) for name in gradlens.__all__}
    for name in MODULES:
        if name != "gradlens.__main__":
            importlib.import_module(name)
    assert callable(gradlens.extract) and not isinstance(gradlens.extract, type(sys))
    assert callable(gradlens.layers) and not isinstance(gradlens.layers, type(sys))
    assert {name: getattr(gradlens, name) for name in gradlens.__all__} == before


def test_subpackages_are_attributes_of_gradlens_after_one_import():
    # a fresh interpreter: in this one, other tests have imported the subpackages already
    code = (
        "import sys, gradlens; "
        "assert 'gradlens.metrics' not in sys.modules and 'gradlens.demos' not in sys.modules; "
        "gradlens.metrics.pointing_game, gradlens.viz.overlay, gradlens.dataset.extract_dataset, "
        "gradlens.interventions.patch, gradlens.demos"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_architecture_diagram_has_every_arrow_the_code_has():
    text = (ROOT / "docs" / "architecture.md").read_text()
    diagram = text.split("```mermaid", 1)[1].split("```", 1)[0]
    drawn = set()
    for line in diagram.splitlines():
        if "-->" in line:
            source, targets = (part.strip() for part in line.split("-->"))
            drawn |= {(source, target.strip()) for target in targets.split("&")}

    def package(name: str) -> str:
        return name.split(".")[1]

    real = {
        (package(name), package(target))
        for name in LIBRARY
        for target in imported_names(name) - FACES
        if package(name) != package(target)
    }
    assert sorted(real - drawn) == [] and sorted(drawn - real) == []
