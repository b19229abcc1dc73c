"""What pyproject.toml declares against what the code imports, and the Python it states.

Building a venv from the extras is too slow for the suite, so the imports are checked on the
source (every ``import`` under hjax/, experiments/ and tests/, lazy ones included) against the
declared dependencies, and ``import hjax`` plus the penalties are run once with every
optional module blocked.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from hjax.cli import OPTIONAL_MODULES

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Imported only inside functions, with their own one-line message when missing (reading a
# .pth file in hjax.models.torchvision_weights; the torchvision-marked tests): in no extra,
# since torch is large and every other weights format is read without it.
OUTSIDE_EXTRAS = {"torch", "torchvision"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*extras: str) -> set[str]:
    reqs = list(PROJECT["dependencies"])
    for extra in extras:
        reqs += PROJECT["optional-dependencies"][extra]
    return {_norm(Requirement(r).name) for r in reqs}


def _distribution(module: str) -> str:
    dists = md.packages_distributions().get(module)
    assert dists, f"import {module}: no installed distribution provides it"
    return _norm(dists[0])


def _imports(path: pathlib.Path, module_level_only=False):
    """(top-level module name, full module, line) of every absolute import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else ast.walk(tree)
    if module_level_only:      # the module body, including under if/try, not inside defs
        nodes, todo = [], list(tree.body)
        while todo:
            node = todo.pop()
            nodes.append(node)
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                todo += [n for f in ("body", "orelse", "finalbody") for n in getattr(node, f, [])]
                todo += [n for h in getattr(node, "handlers", []) for n in h.body]
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield (node.module.split(".")[0], node.module, [a.name for a in node.names],
                   node.lineno)


def _third_party(paths, local=(), module_level_only=False):
    found = {}
    for path in paths:
        for top, _, _, line in _imports(path, module_level_only):
            if top in sys.stdlib_module_names or top == "__future__" or top in local:
                continue
            found.setdefault(top, f"{path.relative_to(ROOT)}:{line}")
    return found


def _check(found: dict[str, str], allowed: set[str], what: str):
    missing = {f"{m} ({_distribution(m)}, {where})" for m, where in found.items()
               if m not in OUTSIDE_EXTRAS and _distribution(m) not in allowed}
    assert not missing, f"imported but not declared for {what}: {sorted(missing)}"


def test_every_library_and_command_import_is_in_the_experiments_extra():
    paths = sorted((ROOT / "hjax").rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))
    # experiments/_bench.py is imported by the bench scripts beside it.
    local = {"hjax"} | {p.stem for p in (ROOT / "experiments").glob("*.py")}
    found = _third_party(paths, local=local)
    assert {"flax", "grain", "PIL", "matplotlib", "absl"} <= set(found)   # the walk sees them
    _check(found, _declared("experiments"), "pip install 'hjax[experiments]'")


def test_every_test_import_is_in_the_test_extra():
    local = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"hjax"}
    found = _third_party(sorted((ROOT / "tests").glob("*.py")), local=local)
    assert "chex" in found
    _check(found, _declared("test"), "pip install 'hjax[test]'")


def _import_closure(module: str, seen: set[str]) -> None:
    """Every hjax module that ``import module`` executes (module-level imports only)."""
    if module in seen:
        return
    seen.add(module)
    parts = module.split(".")
    for i in range(1, len(parts)):            # parent packages run first
        _import_closure(".".join(parts[:i]), seen)
    base = ROOT.joinpath(*parts)
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    for top, full, names, _ in _imports(path, module_level_only=True):
        if top != "hjax":
            continue
        _import_closure(full, seen)
        for name in names:                    # from hjax.core import linear_head
            sub = ROOT.joinpath(*full.split("."), name)
            if sub.with_suffix(".py").exists() or sub.is_dir():
                _import_closure(f"{full}.{name}", seen)


def test_import_hjax_needs_only_the_core_dependencies():
    seen: set[str] = set()
    _import_closure("hjax", seen)
    assert {"hjax.core.penalty", "hjax.core.linear_head"} <= seen
    paths = [ROOT.joinpath(*m.split(".")) for m in sorted(seen)]
    paths = [p / "__init__.py" if p.is_dir() else p.with_suffix(".py") for p in paths]
    found = _third_party(paths, local={"hjax"}, module_level_only=True)
    _check(found, _declared(), "pip install hjax (the core dependencies)")
    assert "chex" not in _declared() and "flax" not in _declared()


def test_penalties_run_with_every_optional_module_blocked():
    blocked = sorted(set(OPTIONAL_MODULES) - {"absl"} | {"chex", "torch"})  # optax needs absl
    code = textwrap.dedent(f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None          # `import name` now raises ModuleNotFoundError
        import jax, jax.numpy as jnp, hjax
        x = jax.random.normal(jax.random.key(0), (2, 8, 3))
        y = jnp.array([[0, 1] * 4, [1, 1, 0, 0] * 2])
        head = {{"kernel": jnp.ones((3, 2)) * 0.1, "bias": jnp.zeros(2)}}
        loss = lambda h, b: hjax.linear_head.loss_value(h, b["x"], b["y"])
        a = hjax.hessian_penalty(loss, head, {{"x": x, "y": y}}, method="hgp")
        b = hjax.linear_head_penalty(head, x, y, method="hgp")
        print(float(a), float(b))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = map(float, out.stdout.split())
    assert a > 0 and abs(a - b) <= 1e-5 * a


def test_optional_modules_table_names_the_extra_that_installs_them():
    for module, (dist, extra) in OPTIONAL_MODULES.items():
        assert _norm(dist) in _declared(extra), f"{module}: {dist} is not in [{extra}]"
        assert _norm(dist) not in _declared(), f"{module}: {dist} is a core dependency"


def _lower_bound(spec: str) -> Version:
    bounds = [Version(s.version) for s in SpecifierSet(spec) if s.operator in (">=", ">")]
    assert bounds, f"Requires-Python {spec!r} has no lower bound"
    return max(bounds)


def test_python_version_statement_is_what_the_pins_need():
    """pyproject's requires-python is the highest lower bound among the pinned releases of
    requirements.txt (as installed here), and the README states the same."""
    stated = _lower_bound(PROJECT["requires-python"])
    assert Version(".".join(map(str, sys.version_info[:3]))) >= stated
    needs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        pinned = next(iter(req.specifier)).version
        try:
            meta = md.metadata(req.name)
        except md.PackageNotFoundError:
            continue
        if meta["Version"] == pinned and meta["Requires-Python"]:
            needs[req.name] = _lower_bound(meta["Requires-Python"])
    # Only pins installed at their pinned version count (the make setup environment has all;
    # a machine with other releases checks the ones it has).
    assert all(v <= stated for v in needs.values()), f"pins need more than {stated}: {needs}"
    if "jax" in needs:
        assert max(needs.values()) == stated, f"pins need only {max(needs.values())}: {needs}"
    readme = (ROOT / "README.md").read_text()
    assert f"Python >= {stated}" in readme, f"README does not say Python >= {stated}"
    assert not re.search(r"Python \d", readme.replace(f"Python >= {stated}", "")), \
        "README states another Python version"


def test_command_without_an_optional_module_says_which_extra_in_one_line(tmp_path):
    # plot imports matplotlib once it runs; blocked, it must end in one line, not a traceback.
    code = textwrap.dedent(f"""
        import runpy, sys
        sys.modules["matplotlib"] = None
        sys.argv = ["plot", "--input_dirs={tmp_path}", "--output_dir={tmp_path / 'out'}"]
        runpy.run_module("hjax.cli.plot", run_name="__main__", alter_sys=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: matplotlib is needed for plot and is not installed: "
                                  "pip install 'hjax[experiments]' (or pip install matplotlib)")


@pytest.mark.parametrize("command", [["-m", "hjax.cli.convert_weights"],
                                     ["experiments/convert_weights.py"]])
def test_module_level_import_of_an_optional_module_is_one_line_too(tmp_path, command):
    # An import that runs before run_main (a command module's own imports: convert_weights
    # imports hjax.models, which needs flax) ends uncaught; in a process started as a command
    # hjax.cli's excepthook prints the same one line for it. flax is blocked from start-up
    # by a sitecustomize module, as if it were not installed.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['flax'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, env=env)
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: flax is needed for convert_weights and is not "
                                  "installed: pip install 'hjax[experiments]' (or pip "
                                  "install flax)")


def test_other_import_errors_keep_their_traceback():
    from hjax.cli import missing_dependency_message
    assert missing_dependency_message(ModuleNotFoundError("x", name="not_a_dependency")) is None
    assert missing_dependency_message(ImportError("cannot import name")) is None
    msg = missing_dependency_message(ModuleNotFoundError("x", name="PIL.Image"))
    assert "pillow is needed" in msg and "hjax[experiments]" in msg
