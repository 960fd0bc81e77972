"""The package's layering, from its source (imports inside functions included): no import
cycle, the kernel readers below everything else, the pure logic free of I/O modules."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "vmemtrace"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict:
    """module -> the vmemtrace modules it imports, wherever in the file."""
    graph = {}
    for path in PKG.rglob("*.py"):
        name = module_name(path)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("vmemtrace")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vmemtrace"):
                for a in node.names:  # "from vmemtrace.kernel import btf" imports a module
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists() else node.module)
        graph[name] = found - {name}
    return graph


GRAPH = imports()


def test_no_import_cycles_lazy_imports_included():
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(GRAPH.get(m, ())):
            if n == "vmemtrace" or n not in GRAPH:
                continue
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_kernel_readers_import_only_the_kernel_layer():
    for m, deps in GRAPH.items():
        if m.startswith("vmemtrace.kernel."):
            outside = {d for d in deps if not d.startswith("vmemtrace.kernel") and
                       d not in ("vmemtrace", "vmemtrace.errors")}
            assert not outside, (m, outside)


def test_pure_logic_does_no_io():
    pure = ("vmemtrace.geometry", "vmemtrace.account", "vmemtrace.ledger", "vmemtrace.verdict",
            "vmemtrace.view", "vmemtrace.checks", "vmemtrace.compounds", "vmemtrace.sections",
            "vmemtrace.backing", "vmemtrace.probes.plan", "vmemtrace.probes.targets")
    io = ("vmemtrace.probes.loader", "vmemtrace.session", "vmemtrace.serve", "vmemtrace.audit",
          "vmemtrace.kernel.kcore", "vmemtrace.kernel.facts", "vmemtrace.cli", "vmemtrace.lab")
    for m in pure:
        bad = {d for d in GRAPH[m] if d.startswith(io)}
        assert not bad, (m, bad)


def test_no_function_over_60_lines():
    """Small functions: one that grows past a screen is split where its parts have names."""
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name} ({length})")
    assert not long, long
