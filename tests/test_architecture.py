"""The layout's rules, checked on the source: imports point down the layers, no import circle,
the core is pure JAX, private helpers stay in their package, and only the CLI prints or exits."""

from __future__ import annotations

import ast
import collections
import pathlib

import pytest

import hjax

PACKAGE = pathlib.Path(hjax.__file__).parent
# Lower layers first; a module may import its own package and the layers below it.
LAYERS = {"errors": 0, "core": 0, "models": 1, "data": 1, "io": 1, "objectives": 2,
          "analysis": 3, "protocols": 4, "cli": 5}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts == ("__init__.py",):
            continue
        yield rel.parts[0].removesuffix(".py"), path, ast.parse(path.read_text(), str(path))


def _hjax_imports(tree):
    """(imported module, names) of every ``import hjax...`` / ``from hjax... import``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "hjax" or node.module.startswith("hjax."):
                yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "hjax" or a.name.startswith("hjax."):
                    yield a.name, [], node.lineno


def _layer_of(module: str, names: list[str]) -> list[str]:
    parts = module.split(".")
    if len(parts) > 1:
        return [parts[1]]
    return names            # "from hjax import data" names the packages


MODULES = list(_modules())


def _module_name(path: pathlib.Path) -> str:
    parts = ("hjax",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """hjax module -> the hjax modules it imports. ``from hjax.a import b`` imports the
    module hjax.a.b where there is one, else hjax.a; ``import hjax.a.b`` imports hjax.a.b."""
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph = {}
    for module, path in paths.items():
        targets = set()
        for imported, names, _ in _hjax_imports(ast.parse(path.read_text(), str(path))):
            targets |= {f"{imported}.{n}" if f"{imported}.{n}" in paths else imported
                        for n in names} or {imported}
        graph[module] = {t for t in targets if t in paths and t != module}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest circle [a, b, ..., a] through each group of modules that import each
    other (a strongly connected component of more than one module), in name order; a group
    with several circles shows the next once the first is broken."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def connect(v):                     # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    circles = []
    for group in groups:
        start = min(group)
        paths, queue = {start: [start]}, collections.deque([start])
        while queue:                    # breadth first: the first way back is a shortest
            v = queue.popleft()
            if start in graph[v]:
                circles.append(paths[v] + [start])
                break
            for w in sorted(graph[v] & group):
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return sorted(circles)


def test_no_import_circle():
    """No hjax module imports, directly or through others, a module that imports it back.
    Module-level and in-function imports both count: an import inside a function hides a
    circle from the interpreter at start-up, not from a reader following the code."""
    circles = _circles(_import_graph())
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_circle_finder_names_the_circle_in_import_order():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert _circles(graph) == [["a", "b", "c", "a"], ["e", "e2", "e"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_every_top_level_package_has_a_layer():
    assert {layer for layer, _, _ in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("layer,path,tree", MODULES, ids=[str(p.relative_to(PACKAGE))
                                                          for _, p, _ in MODULES])
def test_imports_point_down(layer, path, tree):
    for module, names, line in _hjax_imports(tree):
        for target in _layer_of(module, names):
            assert target in LAYERS, f"{path}:{line} imports unknown package hjax.{target}"
            assert target == layer or LAYERS[target] < LAYERS[layer], (
                f"{path}:{line}: hjax.{layer} (layer {LAYERS[layer]}) imports hjax.{target} "
                f"(layer {LAYERS[target]}): imports must point down")


@pytest.mark.parametrize("layer,path,tree", MODULES, ids=[str(p.relative_to(PACKAGE))
                                                          for _, p, _ in MODULES])
def test_private_names_stay_in_their_package(layer, path, tree):
    for module, names, line in _hjax_imports(tree):
        target = _layer_of(module, names)[0] if module != "hjax" else layer
        private = [n for n in names if n.startswith("_")]
        assert target == layer or not private, (
            f"{path}:{line} imports private {private} from another package ({module})")
    for node in ast.walk(tree):          # module._helper across packages
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and isinstance(node.value, ast.Name)):
            imported = {alias: mod for mod, names, _ in _hjax_imports(tree) for alias in names}
            source = imported.get(node.value.id)
            if source is not None and _layer_of(source, [node.value.id])[0] != layer:
                pytest.fail(f"{path}:{node.lineno} uses {node.value.id}.{node.attr}, a private "
                            f"helper of another package")


def test_core_is_pure_jax():
    for layer, path, tree in MODULES:
        if layer != "core":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = ([node.module] if isinstance(node, ast.ImportFrom)
                        else [a.name for a in node.names])
                for m in mods:
                    assert not (m or "").startswith(("flax", "os", "pathlib", "absl")), (
                        f"{path} imports {m}: hjax.core is pure JAX (no Flax, no I/O)")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                pytest.fail(f"{path}:{node.lineno} opens a file: hjax.core does no I/O")


def test_only_the_cli_prints_or_exits():
    for layer, path, tree in MODULES:
        if layer == "cli":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else (
                    f"{getattr(f.value, 'id', '')}.{f.attr}" if isinstance(f, ast.Attribute)
                    else "")
                assert name not in ("print", "sys.exit", "exit"), (
                    f"{path}:{node.lineno} calls {name}: library code logs or raises")
        text = path.read_text()
        assert "absl" not in text or "logging.getLogger(\"absl\")" in text, (
            f"{path} uses absl: only hjax.cli parses flags")


def test_public_api_is_declared():
    assert set(hjax.__all__) >= {"hessian_penalty", "hessian_penalty_terms",
                                 "linear_head_penalty", "linear_head_penalty_terms", "hvp",
                                 "grad_and_hvp", "hutchinson_diag", "exact_hessian_diag"}
    for name in hjax.__all__:
        assert hasattr(hjax, name), name
