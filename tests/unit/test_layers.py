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


# The flow, by folder: kernel facts -> probes -> log -> judge -> output; walk reads the vmemmap
# beside the probes. What is pure holds logic over what the readers found.
PURE = ("vmemtrace.judge.", "vmemtrace.log.sections", "vmemtrace.log.compounds",
        "vmemtrace.walk.backing", "vmemtrace.probes.plan", "vmemtrace.probes.targets")
IO = ("vmemtrace.probes.tracer", "vmemtrace.probes.program", "vmemtrace.probes.maps", "vmemtrace.session", "vmemtrace.output.exporter",
      "vmemtrace.output.scrape_server", "vmemtrace.walk.audit", "vmemtrace.kernel.kcore",
      "vmemtrace.kernel.facts", "vmemtrace.cli", "vmemtrace.lab")
BELOW_OUTPUT = ("vmemtrace.kernel.", "vmemtrace.probes.", "vmemtrace.log.", "vmemtrace.judge.",
                "vmemtrace.walk.")


def test_pure_logic_does_no_io():
    pure = [m for m in GRAPH if m.startswith(PURE)]
    assert len(pure) >= 12, pure  # the folders are there: a rename does not empty the test
    for m in pure:
        bad = {d for d in GRAPH[m] if d.startswith(IO)}
        assert not bad, (m, bad)


def test_nothing_below_the_outputs_imports_them():
    for m, deps in GRAPH.items():
        if m.startswith(BELOW_OUTPUT):
            bad = {d for d in deps if d.startswith(("vmemtrace.output", "vmemtrace.session",
                                                   "vmemtrace.cli"))}
            assert not bad, (m, bad)


def test_the_top_of_the_package_is_the_entry_points_and_the_folders():
    """The flow shows in the tree: at the top only what every layer or the user enters by."""
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 8, top


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


def test_no_module_over_400_lines():
    """A module that outgrows a few screens holds more than one job: split it by job."""
    long = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
