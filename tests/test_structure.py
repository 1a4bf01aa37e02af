"""The package's import structure, read from the source with ``ast`` (nothing is imported):
no import cycle, no module importing another module's private (``_name``) names, and no module
importing from a layer above its own. ``python tests/test_structure.py`` prints the graph.

An import inside a function (a lazy import: optional dependencies, Triton kernels loaded only
when a backend runs) cannot break importing the package, but a cycle through one still ties
two modules together: the lazy imports are checked for cycles and layers as well.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "msa_lab"

#: Lowest first: a module may import from its own layer and the layers below it, never above.
#: An entry names a module, or a package with all its modules; the most specific entry wins.
LAYERS = (
    # Base: checks, the selection type, the plain-PyTorch references, generated data and tasks,
    # the backend tables, the Triton runtime and tiles, the KV-outer plan, files and the environment
    # of results.
    ("base", ("msa_lab.validation", "msa_lab.config_checks", "msa_lab.files", "msa_lab.environment",
              "msa_lab.selection", "msa_lab.reference", "msa_lab.data", "msa_lab.tasks", "msa_lab.backends",
              "msa_lab.triton_runtime", "msa_lab.triton_tiles", "msa_lab.kv_outer_plan")),
    # select: scores -> a selection; each selector's Triton twin sits beside its reference.
    ("select", ("msa_lab.select",)),
    # attend: the Triton kernels (MSA's fused decode reuses the top-k kernel of select) and the
    # FlexAttention path, both behind the public functions.
    ("attend", ("msa_lab.kernels", "msa_lab.flex")),
    # The public operations: attention, decoding with a KV cache, coverage (measure).
    ("operations", ("msa_lab.attention", "msa_lab.decode", "msa_lab.coverage")),
    # Built on the operations: layers and models; benchmarks (timing, costs, sweeps).
    ("layers and benchmarks", ("msa_lab.nn", "msa_lab.bench")),
    # Runners and what they show: training runs and their folders, the demo, figures, explorers.
    ("runners and figures", ("msa_lab.train", "msa_lab.runs", "msa_lab.demo", "msa_lab.viz")),
    ("command line", ("msa_lab.cli",)),
    # The package itself re-exports the public API: a module imports from the module that
    # defines a name, never through msa_lab/__init__.py.
    ("public API", ("msa_lab",)),
)
#: Names of the package itself that any module may read: its metadata, not its API.
PACKAGE_METADATA = ("__version__",)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a package's __init__ for a name it defines)
    name: str | None  # the name taken from the target (``from target import name``), if any
    lazy: bool  # inside a function
    line: int

    def __str__(self) -> str:
        what = f"from {self.target} import {self.name}" if self.name else f"import {self.target}"
        return f"{self.source}:{self.line} {what}{' (lazy)' if self.lazy else ''}"


@lru_cache(maxsize=1)
def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, whether it is a package's __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _targets(node, module: str, is_package: bool, known) -> list[tuple[str, str | None]]:
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == PACKAGE.name]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
        if target.split(".")[0] != PACKAGE.name:
            return []
    # ``from package import submodule`` imports the submodule; any other name comes from the target.
    return [(f"{target}.{a.name}", None) if f"{target}.{a.name}" in known else (target, a.name) for a in node.names]


@lru_cache(maxsize=1)
def imports() -> tuple[Import, ...]:
    known = modules()
    found = []
    for module, (path, is_package) in known.items():
        def visit(node, lazy):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target, name in _targets(child, module, is_package, known):
                        if target != module:
                            found.append(Import(module, target, name, lazy, child.lineno))
                visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return tuple(found)


def placement(module: str) -> tuple[int, str] | None:
    """(layer, entry) of the most specific LAYERS entry naming ``module``, or None."""
    covering = [(rank, entry) for rank, (_, entries) in enumerate(LAYERS) for entry in entries
                # The entry "msa_lab" names the package's __init__ only.
                if module == entry or (entry != PACKAGE.name and module.startswith(entry + "."))]
    return max(covering, key=lambda found: len(found[1]), default=None)


def layer_of(module: str) -> int | None:
    found = placement(module)
    return None if found is None else found[0]


def unit(module: str) -> str:
    """The entry a module belongs to: ``msa_lab.select`` for ``msa_lab.select.moba``."""
    found = placement(module)
    assert found is not None, (f"{module} is in no LAYERS entry: a relative import that climbs out of msa_lab, "
                               "or a new module to place in LAYERS")
    return found[1]


def cycles(edges) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _explain(component, edges) -> str:
    """One loop through ``component``, each step with the import that makes it."""
    inside = set(component)
    step = {}
    for e in edges:
        if e.source in inside and e.target in inside:
            step.setdefault((e.source, e.target), e)
    start, paths = component[0], {component[0]: [component[0]]}
    frontier = [start]
    while frontier:  # breadth first: the shortest way back to the start
        nxt = []
        for node in frontier:
            for (source, target), _ in sorted(step.items()):
                if source != node:
                    continue
                if target == start:
                    loop = paths[node] + [start]
                    return " -> ".join(loop) + "".join(f"\n  {step[pair]}" for pair in zip(loop, loop[1:]))
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    nxt.append(target)
        frontier = nxt
    return " <-> ".join(component)


def test_every_module_has_a_layer():
    missing = [m for m in modules() if layer_of(m) is None]
    assert not missing, f"place these modules in LAYERS (tests/test_structure.py): {missing}"


def test_no_import_cycle_at_module_level():
    found = imports()
    eager = [e for e in found if not e.lazy]
    loops = cycles((e.source, e.target) for e in eager)
    assert not loops, "import cycles:\n" + "\n".join(_explain(c, eager) for c in loops)


def test_no_import_cycle_through_lazy_imports():
    found = imports()
    loops = cycles((e.source, e.target) for e in found)
    assert not loops, "import cycles (lazy imports included):\n" + "\n".join(_explain(c, found) for c in loops)
    # Coarser: a package and the modules beside it, each taken as one unit.
    loops = cycles((unit(e.source), unit(e.target)) for e in found if unit(e.source) != unit(e.target))
    assert not loops, "cycles between packages/modules:\n" + "\n".join(" <-> ".join(c) for c in loops)


def test_no_module_imports_another_modules_private_names():
    private = [str(e) for e in imports() if e.name and e.name.startswith("_") and not e.name.startswith("__")]
    assert not private, ("private names imported from another module (make the name public in its "
                         "module, or move the helper):\n" + "\n".join(private))


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{e}: layer {LAYERS[layer_of(e.source)][0]!r} imports from {LAYERS[layer_of(e.target)][0]!r}"
              for e in imports()
              if layer_of(e.target) > layer_of(e.source)
              and not (e.target == PACKAGE.name and e.name in PACKAGE_METADATA)]
    assert not upward, "imports from a higher layer (see LAYERS):\n" + "\n".join(upward)


def test_the_checks_see_a_cycle_and_the_layers():
    assert cycles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]
    assert cycles([("a", "b"), ("b", "c")]) == []
    assert layer_of("msa_lab.select.moba") < layer_of("msa_lab.kernels.decode") < layer_of("msa_lab.attention")
    assert layer_of("msa_lab") == len(LAYERS) - 1 and layer_of("msa_lab.nowhere") is None
    # The known graph is read: kernels/decode.py takes select's top-k kernel (select below kernels).
    assert any(e.source == "msa_lab.kernels.decode" and e.target == "msa_lab.select.topk_triton" for e in imports())


if __name__ == "__main__":
    by_source: dict[str, list[Import]] = {}
    for edge in imports():
        by_source.setdefault(edge.source, []).append(edge)
    for rank, (name, _) in enumerate(LAYERS):
        print(f"== {rank} {name}")
        for module in (m for m in modules() if layer_of(m) == rank):
            eager = sorted({e.target for e in by_source.get(module, []) if not e.lazy})
            lazy = sorted({e.target for e in by_source.get(module, []) if e.lazy} - set(eager))
            print(f"  {module} -> {', '.join(eager) or '-'}" + (f"  (lazy: {', '.join(lazy)})" if lazy else ""))
