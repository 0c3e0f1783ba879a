"""Dependencies point one way: convert/ may use the library, the library never uses convert/, and
only the CLI (prom_local/cli/, at the top) may use both; inside the library, a package imports only
its own layer and those below (shape_figures.LAYERS), with no import circles, and only engine/
imports llama_cpp. Checked statically, over the source files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import shape_figures

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(source: str) -> set[str]:
    """Every absolute module name `source` imports: import/from statements anywhere (inside
    functions too) and importlib.import_module / __import__ with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                found.add(node.args[0].value)
    return found


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def offenders(folder: Path, forbidden: str, *, skip: Path | None = None) -> list[str]:
    out = []
    for path in sorted(folder.rglob("*.py")):
        if skip is not None and skip in path.parents:
            continue
        bad = sorted(m for m in imported_modules(path.read_text("utf-8")) if is_within(m, forbidden))
        if bad:
            out.append(f"{path.relative_to(ROOT)}: imports {', '.join(bad)}")
    return out


@pytest.mark.parametrize("source", [
    "import convert",
    "import convert.pull as p",
    "def f():\n    from convert.pull import pull_gguf\n",
    "import importlib\nimportlib.import_module('convert.pipeline')",
    "__import__('convert')",
])
def test_the_scanner_sees_every_way_of_importing(source):
    assert any(is_within(m, "convert") for m in imported_modules(source))


def test_the_scanner_ignores_look_alikes():
    source = "from .convert_cmd import x\nimport converters\nfrom prom_local.cli import convert_cmd\n"
    assert not any(is_within(m, "convert") for m in imported_modules(source))


def test_the_library_never_imports_convert():
    library = ROOT / "prom_local"
    assert (library / "backends" / "ray" / "worker.py").exists()
    assert offenders(library, "convert", skip=library / "cli") == []


def test_convert_never_imports_the_cli():
    assert (ROOT / "convert" / "pipeline.py").exists()
    assert offenders(ROOT / "convert", "prom_local.cli") == []


# -- the package's layers (tests/shape_figures.py prints the same figures) ---------------------------

def test_every_package_has_a_layer():
    """A new folder under prom_local/ must be placed in a layer, or the checks below would skip it."""
    placed = {name for layer in shape_figures.LAYERS for name in layer}
    folders = {p.parent.name for p in (ROOT / "prom_local").glob("*/__init__.py")} - {"data"}
    modules = {p.stem for p in (ROOT / "prom_local").glob("*.py")} - {"__init__", "__main__"}
    assert folders | modules <= placed


def test_the_layer_check_sees_an_upward_import():
    graph = {"prom_local.engine.core": {"prom_local.judging.judge"},
             "prom_local.runs.score_file": {"prom_local.engine.core", "prom_local.errors"},
             "prom_local.store.pull": {"prom_local"}}
    assert shape_figures.upward_imports(graph) == ["prom_local.engine.core -> prom_local.judging.judge",
                                                   "prom_local.store.pull -> prom_local"]


def test_the_circle_check_sees_a_late_import_circle():
    graph = {"prom_local.a": {"prom_local.b"}, "prom_local.b": {"prom_local.c"}, "prom_local.c": {"prom_local.a"},
             "prom_local.d": {"prom_local.a"}}
    assert shape_figures.import_circles(graph) == [["prom_local.a", "prom_local.b", "prom_local.c"]]


def test_no_lower_package_imports_a_higher_one():
    assert shape_figures.upward_imports(shape_figures.import_graph()) == []


def test_no_import_circles():
    assert shape_figures.import_circles(shape_figures.import_graph()) == []


def test_llama_cpp_is_imported_only_under_engine():
    assert (ROOT / "prom_local" / "engine" / "llama.py").exists()
    assert shape_figures.llama_cpp_outside_engine() == []


def test_the_top_level_stays_small():
    assert len(shape_figures.top_level_modules()) <= 8
    assert shape_figures.long_modules() == []


@pytest.mark.parametrize("source", [
    "if record.is_relative:\n    pass",
    "x = getattr(item, 'is_relative', False)",
    "ok = isinstance(r, (Record, RelativeRecord))",
    "pair = row.get('mode') == 'relative'",
    "pair = row['mode'] != 'relative'",
])
def test_the_kind_scanner_sees_every_way_of_asking(source):
    assert shape_figures.kind_tests(ast.parse(source)) == [1]


def test_a_records_kind_is_asked_in_few_places():
    """Judge.grader_for for records, reports/rows.kind_of for rows: the rest asks the grader, a
    record's method or the row's kind."""
    assert len(shape_figures.record_kind_branches()) <= 6
