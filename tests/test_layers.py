"""The package's plan, checked: no import cycle between modules, and no layer imports a layer above it (data and
models never import training, inference, export or the CLI), wherever the import is written (at the top or inside a
function)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ramstrans"

# A module's name under ramstrans (its longest listed prefix) -> its layer; a module may import its own layer and those
# below. The base criterion (training.losses) sits below the teachers that wrap it.
LAYERS = {
    "errors": 0,
    "runtime": 0,
    "config": 0,
    "checkpoint": 0,
    "deploy": 0,
    "data": 1,
    "models": 1,
    "inference": 2,
    "training.losses": 2,
    "distill": 3,
    "training": 4,
    "export": 5,
    "cli": 6,
    "bench": 6,
    "__main__": 7,
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), ast.parse(path.read_text(encoding="utf-8"))


def _imports(tree, top_only):
    """(ramstrans module imported, line) of every import; ``top_only``: those that run when the module is imported."""
    nodes = tree.body if top_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ramstrans"):
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ramstrans"):
                    yield alias.name, node.lineno


def _layer(module):
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


def test_no_layer_imports_a_layer_above_it():
    wrong = []
    for name, tree in _modules():
        if _layer(name) is None:
            continue  # the package's own __init__ (lazy public names)
        for target, line in _imports(tree, top_only=False):
            if _layer(target) is not None and _layer(target) > _layer(name):
                wrong.append(f"{name}:{line} imports {target}")
    assert wrong == []


def _cycles(graph):
    """Every cycle a depth-first walk of ``graph`` ({module: modules it imports}) meets, as "a -> b -> a"."""
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycle():
    known = dict(_modules())
    graph = {}
    for name, tree in known.items():
        targets = {t for t, _ in _imports(tree, top_only=True) if t in known and t != name}
        # importing a.b.c first runs the __init__ of a.b, unless the importer is inside a.b (already running)
        parents = {".".join(t.split(".")[:i]) for t in targets for i in range(2, len(t.split(".")))}
        graph[name] = targets | {p for p in parents & set(known) if not name.startswith(p + ".") and p != name}
    assert _cycles(graph) == []
