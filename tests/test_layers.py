"""The package's plan, checked: no import cycle at any depth (between modules, and between the packages at every level
of the tree), wherever the import is written (at the top, inside a function, or for type checking only); no layer
imports a layer above it (data and models never import training, inference, export or the CLI); no function longer
than 80 lines; and docs/design.md names every module."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ramstrans"

# A module's name under ramstrans (its longest listed prefix) -> its layer; a module may import its own layer and those
# below. ``registry`` (the extension points, read without torch) sits under everything; ``bench`` beside the CLI.
LAYERS = {
    "errors": 0,
    "fields": 0,
    "registry": 0,
    "runtime": 1,
    "config": 2,
    "checkpoint": 3,
    "deploy": 3,
    "data": 4,
    "models": 4,
    "losses": 5,
    "inference": 5,
    "distill": 6,
    "training": 7,
    "export": 8,
    "cli": 9,
    "bench": 9,
    "__main__": 10,
}
MAX_FUNCTION_LINES = 80


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), ast.parse(path.read_text(encoding="utf-8"))


KNOWN = dict(_modules())


def _imports(tree):
    """(ramstrans module imported, line) of every import statement anywhere in the module (top level, functions,
    ``if TYPE_CHECKING``); ``from a import b`` counts ``a.b`` when ``b`` is a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ramstrans"):
            yield node.module, node.lineno
            for alias in node.names:
                if f"{node.module}.{alias.name}" in KNOWN:
                    yield f"{node.module}.{alias.name}", node.lineno
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


def test_every_module_has_a_layer():
    assert [name for name in KNOWN if name != "ramstrans" and _layer(name) is None] == []


def test_no_layer_imports_a_layer_above_it():
    wrong = []
    for name, tree in KNOWN.items():
        if _layer(name) is None:
            continue  # the package's own __init__ (lazy public names)
        for target, line in _imports(tree):
            if _layer(target) is not None and _layer(target) > _layer(name):
                wrong.append(f"{name}:{line} imports {target}")
    assert wrong == []


def _cycles(graph):
    """Every cycle a depth-first walk of ``graph`` ({node: nodes it imports}) meets, as "a -> b -> a"."""
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


def _module_graph():
    """{module: the ramstrans modules it imports, anywhere in it}."""
    return {name: {t for t, _ in _imports(tree) if t in KNOWN and t != name} for name, tree in KNOWN.items()}


def test_no_import_cycle_between_modules():
    assert _cycles(_module_graph()) == []


def _package_graphs():
    """For every package of the tree, the graph between its children (subpackages and modules): child a -> child b
    when any module under a imports any module under b."""
    packages = {name for name in KNOWN if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()}
    graphs = {p: {} for p in packages}
    for name, targets in _module_graph().items():
        for target in targets:
            for package in packages:
                prefix = package + "."
                if name.startswith(prefix) and target.startswith(prefix):
                    a, b = name[len(prefix) :].split(".")[0], target[len(prefix) :].split(".")[0]
                    if a != b:
                        graphs[package].setdefault(a, set()).add(b)
    return graphs


def test_no_import_cycle_between_packages_at_any_depth():
    found = {package: _cycles(graph) for package, graph in _package_graphs().items()}
    assert {package: cycles for package, cycles in found.items() if cycles} == {}


def test_the_package_check_sees_a_cycle_between_sibling_packages():
    # config.load -> runtime.files and runtime.folder -> config would be a cycle between the packages config and
    # runtime, though no two modules import each other
    graph = {"config": {"runtime"}, "runtime": {"config"}}
    assert _cycles(graph) == ["config -> runtime -> config"]
    assert "ramstrans" in _package_graphs() and "runtime" in _package_graphs()["ramstrans"]


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, tree in KNOWN.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def test_docs_design_names_every_module():
    """Every module by its path under ramstrans/ (a package by its folder, for its __init__), as a word of
    docs/design.md's map."""
    words = set((ROOT / "docs" / "design.md").read_text(encoding="utf-8").replace("`", " ").split())
    missing = []
    for name in KNOWN:
        if name == "ramstrans":
            continue
        path = name.split(".", 1)[1].replace(".", "/")
        shown = f"{path}/" if (PACKAGE / path / "__init__.py").is_file() else f"{path}.py"
        if shown not in words:
            missing.append(shown)
    assert missing == []
