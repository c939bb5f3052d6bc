"""The tutorials run: every script in ``examples/`` in its ``--quick`` mode, and the docs
include only code and outputs that exist.

The pages under ``docs/`` include their code from the example scripts (``--8<--`` snippet
sections), so a script that runs here is code that works on the page.
"""

from __future__ import annotations

import re
import runpy
import types
from pathlib import Path

import matplotlib
import pytest
import torch

import gradlens

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
SNIPPET = re.compile(r'^\s*--8<--\s+"([^":]+)(?::([^"]*))?"', re.M)


@pytest.fixture(autouse=True)
def examples_importable(monkeypatch):
    """The scripts import their shared helpers (``_common``) as ``python examples/x.py`` would."""
    monkeypatch.syspath_prepend(str(EXAMPLES))


@pytest.fixture
def one_thread():
    # Small models on a shared 2-core machine: a second intra-op thread only waits for the
    # first (measured here: ResNet-18 at 64 x 64 took 30 ms on one thread, 1.4 s on two
    # while other processes were busy).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_example_runs_in_quick_mode_and_writes_its_outputs(script, tmp_path, one_thread):
    main = runpy.run_path(str(script))["main"]
    outputs = main(["--quick", "--out", str(tmp_path)])
    assert outputs, f"{script.name} reported no outputs"
    for path in outputs:
        assert Path(path).is_file() and Path(path).stat().st_size > 0, (
            f"{script.name} did not write {path}"
        )
        assert Path(path).parent == tmp_path


def _snippet_references() -> list[tuple[Path, str, str | None]]:
    references = []
    for page in DOCS.rglob("*.md"):
        for match in SNIPPET.finditer(page.read_text()):
            references.append((page, match.group(1), match.group(2)))
    return references


def test_every_snippet_the_docs_include_exists():
    for page, file, section in _snippet_references():
        path = ROOT / file
        assert path.is_file(), f"{page.name} includes {file}, which does not exist"
        if section and not section[0].isdigit() and not section.startswith(":"):
            text = path.read_text()
            assert f"[start:{section}]" in text and f"[end:{section}]" in text, (
                f"{page.name} includes section {section!r} of {file}, which does not define it"
            )


def test_every_snippet_line_is_well_formed():
    """A reformatted marker (``--8 < --"file"``) is shown as text instead of the code."""
    for page in DOCS.rglob("*.md"):
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.lstrip().startswith("--8") and not line.lstrip().startswith('--8<-- "'):
                raise AssertionError(f"{page.name}:{number}: malformed snippet line {line!r}")


def test_pages_include_code_only_from_examples_and_outputs_from_docs_figures():
    for page, file, _ in _snippet_references():
        assert file.startswith(("examples/", "docs/figures/")), f"{page.name} includes {file}"


def test_every_figure_the_docs_show_exists_and_is_small():
    for page in DOCS.rglob("*.md"):
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text()):
            path = (page.parent / image).resolve()
            assert path.is_file(), f"{page.name} shows {image}, which does not exist"
            assert path.stat().st_size < 200_000, f"{image} is {path.stat().st_size} bytes"


def _defining_module(name: str, value: object) -> str:
    if isinstance(value, types.ModuleType):
        return value.__name__
    module = getattr(value, "__module__", None)
    if module and module.startswith("gradlens"):
        return module
    for candidate in vars(gradlens).values():  # constants such as METHODS
        if isinstance(candidate, types.ModuleType) and name in getattr(candidate, "__all__", ()):
            return candidate.__name__
    return "gradlens"


def test_every_public_name_has_an_api_reference_page():
    reference = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    documented = set(re.findall(r"^::: (gradlens[\w.]*)", reference, re.M))
    missing = []
    for name in gradlens.__all__:
        if name.startswith("__"):
            continue
        module = _defining_module(name, getattr(gradlens, name))
        if not any(module == d or module.startswith(d + ".") for d in documented):
            missing.append(f"{name} (from {module})")
    assert not missing, f"public names without an API page: {missing}"


def test_every_public_name_is_listed_in_the_api_overview():
    overview = (DOCS / "api" / "index.md").read_text()
    missing = [
        n
        for n in gradlens.__all__
        if not n.startswith("__") and f"gradlens.{n}" not in overview and f"`{n}`" not in overview
    ]
    assert not missing, f"names missing from docs/api/index.md: {missing}"


def test_every_public_module_has_an_api_reference_page():
    import pkgutil

    reference = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    documented = set(re.findall(r"^::: (gradlens[\w.]*)", reference, re.M))
    old_paths = {"data", "training", "summary", "recorder", "outputs", "extract", "selection"}
    modules = [
        f"gradlens.{m.name}"
        for m in pkgutil.iter_modules(gradlens.__path__)
        if not m.name.startswith("_") and m.name not in old_paths | {"version"}
    ]
    missing = [m for m in modules if m not in documented]
    assert not missing, f"modules without a page under docs/api: {missing}"
