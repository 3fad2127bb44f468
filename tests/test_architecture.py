"""Architecture checks: the import-linter contracts in setup.cfg, no import cycles, a light ``encslim --help``.

The contracts (``[importlinter...]`` in setup.cfg) encode DESIGN's layering: models < data <
bench < prune | finetune | export < demo < recipes < cli (the three stages independent of each
other), no stage importing a family package (only the registry does), with the speed scripts in
``encslim.bench.perf`` allowed to import any stage. .ci/run runs ``lint-imports`` as well.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# lint-imports, run by this interpreter (the one that has encslim installed), not whatever
# `lint-imports` happens to be first on PATH
LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports_command; "
    "sys.exit(lint_imports_command())"
)

HELP_IMPORTS = r"""
import sys
from encslim.cli import main
try:
    main(["--help"])
    code = 0
except SystemExit as exit_:
    code = exit_.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"torch", "transformers"})
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


def test_import_contracts_are_kept():
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed (it is in the test extra: pip install -e '.[test]')")
    proc = subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "0 broken" in output, output
    assert "Analyzed" in output, output


def test_help_imports_neither_torch_nor_transformers():
    proc = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Commands" in proc.stdout and "finetune" in proc.stdout, proc.stdout
    assert "HEAVY=\n" in proc.stdout, f"`encslim --help` imported: {proc.stdout.rsplit('HEAVY=', 1)[-1]}"


def import_cycles(graph):
    """Every import cycle of a grimp graph, each named as a closed chain ``[a, b, ..., a]``.

    An edge is an import statement (at module level or inside a function) of one module by
    another; ``if TYPE_CHECKING:`` imports are left out by the graph's builder (they never run), and
    so is the implicit import of a parent package (``import a.b`` runs ``a/__init__``): a package
    ``__init__`` takes part in a cycle only through its own import statements. One cycle is named
    per strongly connected component (breaking it may leave another in the same component, which
    the next run names).
    """
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for root in edges:  # Tarjan's strongly connected components, iteratively
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            for nxt in edges[node]:
                if nxt in on_stack:
                    low[node] = min(low[node], low[nxt])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    components.append(component)
    cycles = []
    for component in components:
        start = min(component)
        step = next(m for m in edges[start] if m in component)
        back = graph.find_shortest_chain(importer=step, imported=start) if step != start else (start,)
        cycles.append([start, *back] if step != start else [start, start])
    return sorted(cycles)


def _graph():
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the test extra)")
    return grimp


def test_import_cycles_names_a_planted_cycle():
    grimp = _graph()
    graph = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.d", "p.e")]:
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph) == [["p.a", "p.b", "p.c", "p.a"]]
    graph.remove_import(importer="p.c", imported="p.a")
    assert import_cycles(graph) == []


def test_no_import_cycles_between_library_modules():
    grimp = _graph()
    graph = grimp.build_graph("encslim", exclude_type_checking_imports=True, cache_dir=None)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles between encslim modules:\n" + "\n".join(" -> ".join(c) for c in cycles)
