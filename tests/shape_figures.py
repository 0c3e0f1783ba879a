"""The package's shape in figures, read statically from the source (no prom_local import):

    python tests/shape_figures.py

prints top-level modules, import circles, upward imports between layers, llama_cpp imports outside
engine/, the default profile's literal, record-kind branches, long functions and long modules.
tests/test_layering.py asserts on the same functions, so the figures and the test cannot disagree.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "prom_local"

# Lowest first. A module may import its own layer and the layers below it, never one above.
# errors/settings/units/safe_files/hosts are the floor; the shells (serve, tui, then cli which
# starts them) are the roof.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "settings", "units", "safe_files", "hosts"),
    ("engine",),
    ("judging",),
    ("inputs",),
    ("store",),
    ("runs",),
    ("backends",),
    ("reports",),
    ("diagnostics",),
    ("serve", "tui"),
    ("cli",),
]
DEFAULT_PROFILE = "prometheus-ko"
RECORD_CLASSES = {"Record", "RelativeRecord", "AnyRecord"}
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of everything `path` imports, anywhere in the file (inside functions and
    TYPE_CHECKING blocks too: a late import still ties the two modules together).
    `from pkg import name` counts as pkg.name when that is a module, else as pkg."""
    tree = ast.parse(path.read_text("utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            for alias in node.names:
                sub = f"{base_name}.{alias.name}"
                found.add(sub if is_module(sub) else base_name)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                found.add(node.args[0].value)
    return found


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    """prom_local module -> the prom_local modules it imports (a package counts as its __init__)."""
    graph = {}
    for path in source_files():
        graph[module_name(path)] = {m for m in imports_of(path)
                                    if m.startswith("prom_local") and is_module(m)} - {module_name(path)}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def layer_of(module: str) -> int | None:
    """The layer of a prom_local module; None for the package itself and its __main__."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for level, names in enumerate(LAYERS):
        if parts[1] in names:
            return level
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module)
        if mine is None:
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                out.append(f"{module} -> {target}")
            elif target == "prom_local" and mine < len(LAYERS) - 1:
                # The package's public face imports everything: only the top layer may use it.
                out.append(f"{module} -> {target}")
    return out


def llama_cpp_outside_engine() -> list[str]:
    engine = PACKAGE / "engine"
    return [f"{path.relative_to(ROOT)}" for path in source_files()
            if engine not in path.parents
            and any(m == "llama_cpp" or m.startswith("llama_cpp.") for m in imports_of(path))]


def _trees() -> list[tuple[Path, ast.AST]]:
    return [(path, ast.parse(path.read_text("utf-8"))) for path in source_files()]


def default_profile_literals() -> list[str]:
    return [f"{path.relative_to(ROOT)}:{node.lineno}" for path, tree in _trees() for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value == DEFAULT_PROFILE]


def record_kind_branches() -> list[str]:
    """Places that ask a record (or row) which kind it is: `is_relative` used as a name, attribute,
    call or getattr() string, isinstance() against a record class, and a row's "mode" compared
    with "relative" (rows are dicts: reports/rows.kind_of is their one test)."""
    return [f"{path.relative_to(ROOT)}:{line}" for path, tree in _trees() for line in kind_tests(tree)]


def kind_tests(tree: ast.AST) -> list[int]:
    """Line numbers of the record-kind tests in one parsed module (see record_kind_branches)."""
    out = []
    for node in ast.walk(tree):
        hit = False
        if isinstance(node, ast.Name) and node.id == "is_relative" and isinstance(node.ctx, ast.Load):
            hit = True
        elif isinstance(node, ast.Attribute) and node.attr == "is_relative":
            hit = True
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" \
                and len(node.args) == 2:
            classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            hit = any(getattr(c, "id", getattr(c, "attr", None)) in RECORD_CLASSES for c in classes)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            hit = node.args[1].value == "is_relative"
        elif isinstance(node, ast.Compare):
            hit = any(isinstance(c, ast.Constant) and c.value == "relative" for c in node.comparators) \
                and _is_mode_lookup(node.left)
        if hit:
            out.append(node.lineno)
    return out


def _is_mode_lookup(node: ast.AST) -> bool:
    """row.get("mode") or row["mode"]."""
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get" and node.args:
        key = node.args[0]
    elif isinstance(node, ast.Subscript):
        key = node.slice
    else:
        return False
    return isinstance(key, ast.Constant) and key.value == "mode"


def _own_body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of the body, less those of functions and classes defined inside it (they count alone:
    a typer `register` holding its command is not one long function)."""
    lines = set(range(function.body[0].lineno, function.end_lineno + 1))
    pending = list(ast.iter_child_nodes(function))
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines -= set(range(first, node.end_lineno + 1))
        else:
            pending.extend(ast.iter_child_nodes(node))
    return len(lines)


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions whose own body (first statement to the last line) is over `limit` lines."""
    out = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _own_body_lines(node)
                if lines > limit:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    return out


def long_modules(limit: int = MAX_MODULE_LINES) -> list[str]:
    out = []
    for path in source_files():
        lines = len(path.read_text("utf-8").splitlines())
        if lines > limit:
            out.append(f"{path.relative_to(ROOT)} {lines}")
    return out


def top_level_modules() -> list[str]:
    return sorted(path.name for path in PACKAGE.glob("*.py"))


def main() -> None:
    graph = import_graph()
    figures = [
        ("top-level modules in prom_local/ (at most 8)", top_level_modules()),
        ("import circles (0)", [" <-> ".join(c) for c in import_circles(graph)]),
        ("imports from a lower layer to a higher one (0)", upward_imports(graph)),
        ("llama_cpp imported outside engine/ (0)", llama_cpp_outside_engine()),
        (f"the default profile {DEFAULT_PROFILE!r} as a literal (1)", default_profile_literals()),
        ("record-kind branches (at most 6)", record_kind_branches()),
        (f"functions over {MAX_FUNCTION_LINES} lines (0)", long_functions()),
        (f"modules over {MAX_MODULE_LINES} lines (0)", long_modules()),
    ]
    for title, items in figures:
        print(f"{len(items):4d}  {title}")
        for item in items:
            print(f"        {item}")


if __name__ == "__main__":
    main()
