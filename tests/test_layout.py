"""The code's layout, read from the source with `ast` (nothing is imported): imports flow one way
(`launch.py -> app -> wilss -> models`, and `research` on top of them all: the product never imports it), command
modules are not libraries, no import cycles, short files, short functions in the product.

Imports inside functions count as much as those at the top: a late import hides a dependency, it does not remove it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wilss", "models", "app")   # the product, with launch.py
RESEARCH = ("research",)                 # what produces the figures: may import the product, never the reverse
MAX_LINES = 400   # STYLE.md: a file past a few hundred lines is asking to be split
MAX_FUNCTION_LINES = 60   # STYLE.md: a function past ~60 lines is asking to be split (the product's)
# Product modules allowed to import research, each with why (none: the reliability script is research/stress.py).
RESEARCH_IMPORTS_ALLOWED: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_files() -> dict[str, Path]:
    files = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).glob("*.py"))}
    files["launch"] = ROOT / "launch.py"
    return files


def research_files() -> dict[str, Path]:
    return {module_name(p): p for package in RESEARCH for p in sorted((ROOT / package).glob("*.py"))}


PRODUCT = product_files()
FILES = {**PRODUCT, **research_files()}


def imports_of(module: str, source: str, *, is_package: bool = False) -> set[str]:
    """Every module that ``module``'s ``source`` imports, anywhere in the file. ``from package import name`` counts as
    importing the submodule ``package.name`` where that is one of ours, else the package itself."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from . import x, from .y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            subs = {f"{base}.{alias.name}" for alias in node.names} & FILES.keys()
            found.update(subs or {base})
    return found


GRAPH = {module: imports_of(module, path.read_text(), is_package=path.name == "__init__.py")
         for module, path in FILES.items()}


def top(name: str) -> str:
    return name.partition(".")[0]


def offending(prefixes: tuple[str, ...], forbidden: set[str]) -> list[str]:
    return sorted(f"{m} imports {i}" for m, deps in GRAPH.items() if m.startswith(prefixes)
                  for i in deps if top(i) in forbidden)


def test_the_parser_sees_every_kind_of_import():
    source = ("import gradio as gr\nfrom wilss import recipes, conventions\nfrom models import DEFAULT_ARCH\n"
              "def late():\n    from wilss.engine import resolve_device\n    from . import data\n")
    assert imports_of("wilss.x", source) == {"gradio", "wilss.recipes", "wilss.conventions", "models",
                                             "wilss.engine", "wilss.data"}
    assert "gradio" in GRAPH["app.handlers"] and "models.segmenter" in GRAPH["models.builders"]


def test_the_method_and_networks_import_no_ui():
    assert offending(("wilss", "models"), {"gradio", "gradio_client", "app", "launch"}) == []


def test_the_product_never_imports_research():
    found = [line for line in offending(tuple(PRODUCT), set(RESEARCH))
             if line.partition(" ")[0] not in RESEARCH_IMPORTS_ALLOWED]
    assert found == [], "\n".join(found)
    assert set(RESEARCH_IMPORTS_ALLOWED) <= PRODUCT.keys()


def test_only_the_app_imports_gradio():
    """The UI's toolkit stays in the app and its launcher: the method, the networks and research run without it."""
    ui = ("app.", "launch")
    found = sorted(f"{m} imports {i}" for m, deps in GRAPH.items() if not m.startswith(ui)
                   for i in deps if top(i) in {"gradio", "gradio_client"} and m not in RESEARCH_ONLY_CLIENTS)
    assert found == [], "\n".join(found)


# Research modules that drive the served app as a user's browser would: gradio's client, never gradio itself.
RESEARCH_ONLY_CLIENTS = {"research.app_bench", "research.app_testing", "research.stress"}


def test_research_reaches_the_app_only_through_its_client():
    assert not any(top(i) == "gradio" for m in RESEARCH_ONLY_CLIENTS for i in GRAPH[m])


def test_networks_do_not_import_the_method():
    assert offending(("models",), {"wilss"}) == []


# `cli_*.py` modules that are not commands: what several commands share, or one command's part split off.
HELPERS = {"wilss.cli_common": "flags, checks and output shared by every command",
           "wilss.cli_resume": "add-class's long-run flags and snapshots (not a command, despite its name)",
           "wilss.cli_bases": "pretrain's --data and --tags, shared with python -m research pretrain",
           "research.cli_demo": "benchmark's demo part (the app's one-click update, timed and scored)",
           "research.cli_tags": "pretrain's --tags and benchmark's --tags-base part (a base from image tags alone)",
           "research.cli_sequence": "benchmark's --sequence part (forgetting over a long sequence of weak steps)"}


@pytest.mark.parametrize("package", ["wilss", "research"])
def test_command_modules_do_not_import_each_other(package):
    """`<package>/cli_<command>.py` are entry points that only the dispatcher `<package>/cli.py` imports: what two of
    them share lives in a helper or a library module. No module of either package imports a command module of the
    other (research uses the product's helpers, never its commands)."""
    dispatcher = f"{package}.cli"
    commands = {m for m in GRAPH if m.startswith(f"{package}.cli_")} - HELPERS.keys()
    assert commands == {m for m in GRAPH[dispatcher] if m.startswith(f"{package}.cli_")} - HELPERS.keys()
    found = sorted(f"{m} imports {i}" for m in GRAPH if m != dispatcher for i in GRAPH[m] & commands)
    assert not found, "\n".join(found)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v] & graph.keys():
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert not found, found


@pytest.mark.parametrize("module", sorted(FILES))
def test_no_file_over_the_line_limit(module):
    lines = len(FILES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{FILES[module].relative_to(ROOT)}: {lines} lines"


def function_lengths(source: str) -> dict[str, int]:
    """Lines of every function and method (``def`` to its last line, decorators left out), by qualified name."""
    found = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found[name] = child.end_lineno - child.lineno + 1
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_function_lengths_are_counted_without_decorators():
    source = ("@deco\ndef f(x):\n    def g():\n        return 1\n    return g\n"
              "class C:\n    def m(self):\n        pass\n")
    assert function_lengths(source) == {"f": 4, "f.g": 2, "C.m": 2}


@pytest.mark.parametrize("module", sorted(PRODUCT))
def test_no_product_function_over_the_limit(module):
    lengths = {f"{module}.{name}": n for name, n in function_lengths(PRODUCT[module].read_text()).items()}
    long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert not long, f"{PRODUCT[module].relative_to(ROOT)}: {long}"


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or not (itself included)."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen and module in graph:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_add_class_reaches_only_the_product():
    """The add-class path (its command module, the service, the method, the networks) needs none of research: 38
    modules at the split, 43 before it (the generator, pretext, protocols and benchmark harness among them); 41 with
    the tags-only base and HRHF replay, which the service offers; 43 with the method choice and the offline pipeline
    (wilss.methods, wilss.offline); 44 with the optimiser that spares torch._dynamo (wilss.optim). A new module on
    the path raises the cap on purpose."""
    path = reachable(GRAPH, "wilss.cli_update")
    assert path <= PRODUCT.keys(), sorted(path - PRODUCT.keys())
    assert len(path) <= 44, sorted(path)
