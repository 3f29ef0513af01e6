"""The package's import graph: no import cycles anywhere in detr_ops, and the Triton kernels never
import the public op layer (``detr_ops/triton`` holds kernels and launchers; ``detr_ops/ops`` the
public functions; ``detr_ops/_registrations.py`` the glue between them).

Every ``import`` statement counts, at module level or inside a function, read from the source with
``ast`` (an import inside a function still makes a cycle when both modules need each other).
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "detr_ops"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules["detr_ops._C"] = None  # the compiled extension: imports nothing of ours
    return modules


def _imports(name: str, path: pathlib.Path, modules) -> set:
    """The detr_ops modules that `name` imports (``from pkg import sub`` counts as importing pkg.sub
    when sub is a module, else as importing pkg itself)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in modules else source)
    return {m for m in found if m in modules and m != name}


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) if path else set() for name, path in modules.items()}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_triton_kernels_never_import_the_op_layer():
    graph = _graph()
    offenders = {m: sorted(i for i in imports if i == "detr_ops.ops" or i.startswith("detr_ops.ops."))
                 for m, imports in graph.items() if m.startswith("detr_ops.triton")}
    assert {m: i for m, i in offenders.items() if i} == {}


@pytest.mark.parametrize("module", ["detr_ops.ops.box_iou", "detr_ops.triton.box_iou", "detr_ops._registrations"])
def test_graph_sees_the_known_imports(module):
    """Guards the checker itself: each of these modules has detr_ops imports it must report."""
    assert _graph()[module]
