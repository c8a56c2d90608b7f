"""The package's shape, checked on its source (../shared/DESIGN.md's invariants): layers point down, there are no
import cycles (lazy imports and importlib included), scripts use the library only, and library functions take
typed values, never an argparse Namespace."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "drsformer"

ENTRY_POINTS = {"drsformer.cli", "drsformer.train", "drsformer.test", "drsformer.__main__", "drsformer.cluster"}
# Modules that a model, a dataset or a metric may need: the lowest layer, usable alone in a notebook.
FOUNDATION = ("errors", "registry", "files", "devices", "precision", "memory", "optional", "benchmarks", "losses",
              "optim")  # fmt: skip
LOW = ("archs", "data", "metrics")
# What runs models, trains them, scores sets, serves pages and parses command lines: above the low layer.
HIGH = ("engine", "evaluation", "serve", "commands", "config", "demo", "inference", "tiling", "timing", "deploy",
        "photos")  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    is_package = (PACKAGE / Path(*package[1:]) / "__init__.py").exists() if len(package) > 1 else True
    base = package if is_package else package[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (inside functions too); ``from package import module`` counts
    as the module. A module that calls ``importlib.import_module`` (or ``__import__``) on a name it computes
    imports every module it names in a string, too."""
    module = module_name(path)
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    named: set[str] = set()
    by_name = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            for alias in node.names:
                candidate = Path(*f"{base}.{alias.name}".split("."))
                if (ROOT / candidate).with_suffix(".py").exists() or (ROOT / candidate / "__init__.py").exists():
                    found.add(f"{base}.{alias.name}")  # a module of the package
                else:
                    found.add(base)  # a name defined in the module (or package) itself
        elif isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in ("import_module", "__import__"):
            by_name = True
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _is_module(node.value):
            named.add(node.value)
    return {name for name in found | (named if by_name else set()) if name.startswith("drsformer")}


def _is_module(text: str) -> bool:
    if not text.startswith("drsformer") or not all(part.isidentifier() for part in text.split(".")):
        return False
    path = ROOT / Path(*text.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


GRAPH = {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}


def _under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == f"drsformer.{p}" or module.startswith(f"drsformer.{p}.") for p in packages)


def test_the_import_graph_is_read() -> None:
    assert "drsformer.archs.unet" in GRAPH["drsformer.archs.drsformer"]
    assert "drsformer.commands.running" in GRAPH["drsformer.cli"]


def test_models_data_and_metrics_import_nothing_above_them() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _under(module, LOW + FOUNDATION)
        for target in targets
        if _under(target, HIGH) or target in ENTRY_POINTS
    ]
    assert not wrong, wrong


def test_no_library_module_imports_a_command_or_an_entry_point() -> None:
    library = [m for m in GRAPH if m not in ENTRY_POINTS and not _under(m, ("commands",))]
    wrong = [
        f"{module} imports {target}"
        for module in library
        for target in GRAPH[module]
        if target in ENTRY_POINTS or _under(target, ("commands",))
    ]
    assert not wrong, wrong


def test_entry_points_and_commands_do_not_import_each_other() -> None:
    commands = [m for m in GRAPH if _under(m, ("commands",)) and m.split(".")[-1] not in ("args", "running")]
    for module in commands + sorted(ENTRY_POINTS - {"drsformer.cli", "drsformer.__main__"}):
        wrong = [t for t in GRAPH[module] if t != module and (t in ENTRY_POINTS or t in commands)]
        assert not wrong, (module, wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_there_are_no_import_cycles() -> None:
    # A package's __init__ importing its own modules is not a cycle of the code's layers; leave those edges out.
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in GRAPH.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py")))
def test_scripts_use_the_library_only(script: str) -> None:
    tree = ast.parse((ROOT / "scripts" / script).read_text())
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("drsformer"):
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            wrong += [t for t in targets if t in ENTRY_POINTS or (_under(t, ("commands",)) and "args" not in t)]
            wrong += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            wrong += [a.name for a in node.names if a.name in ENTRY_POINTS]
    assert not wrong, wrong


def test_library_functions_take_typed_values() -> None:
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        if module in ENTRY_POINTS or _under(module, ("commands",)):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.args + node.args.kwonlyargs + node.args.posonlyargs
                for arg in arguments:
                    if arg.annotation is not None and "Namespace" in ast.unparse(arg.annotation):
                        wrong.append(f"{module}.{node.name}({arg.arg})")
    assert not wrong, wrong
