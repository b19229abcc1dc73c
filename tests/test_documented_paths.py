"""What README.md, docs/*.md and the Makefile tell a reader to run or open exists.

Checked on the text, statically: every ``python -m hjax.cli.X`` names a module, every
``experiments/...``, ``hjax/...``, ``tests/...``, ``docs/...`` and ``results/...`` path exists
(except the ones a command writes: values of ``--output_dir=`` / ``--output=``), every
``--flag`` given to a documented command is defined by that command (absl ``DEFINE_*`` in its
module, following aliases such as experiments/run.py -> hjax.cli.colored_mnist), every
dotted ``hjax.x.y`` name resolves, and the help text of every command keeps its line breaks.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md"))]
ABSL_FLAGS = {"help", "helpfull", "flagfile", "undefok"}
COMMAND = re.compile(r"(?:python3?|\$\(PY\)|\$\$\(PY\))\s+(?:-m\s+(hjax\.cli\.\w+)|"
                     r"(experiments/[\w/]+\.py))")


def _doc_text(path: pathlib.Path) -> str:
    # Shell line continuations join a command's lines.
    return re.sub(r"\\\n", " ", path.read_text())


def _rel(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


def test_documented_modules_and_paths_exist():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"-m (hjax\.cli\.\w+)", text):
            if not ROOT.joinpath(*m.group(1).split(".")).with_suffix(".py").exists():
                missing.append(f"{_rel(doc)}: {m.group(1)}")
        for m in re.finditer(r"(?<![\w/.$=-])((?:experiments|hjax|tests|results|docs)/"
                             r"[\w/.-]*\w)(?![\w$*{<(])", text):
            before = text[max(0, m.start() - 14):m.start()]
            if before.endswith(("--output_dir=", "--output=")):
                continue                          # what a command writes
            if not (ROOT / m.group(1)).exists():
                missing.append(f"{_rel(doc)}: {m.group(1)}")
    assert not missing, f"documented but missing: {missing}"


def _module_file(command: str) -> pathlib.Path:
    if command.startswith("hjax."):
        return ROOT.joinpath(*command.split(".")).with_suffix(".py")
    return ROOT / command


def _defined_flags(path: pathlib.Path) -> set[str]:
    """absl flags defined in ``path``, in the hjax.cli modules it takes ``main`` from, and in
    the shared flag modules whose ``define_flags`` it calls (hjax.cli.distributed)."""
    source = path.read_text()
    tree = ast.parse(source)
    names = set()
    for shared in re.findall(r"^(\w+)\.define_flags\(", source, re.M):
        names |= _defined_flags(ROOT / "hjax" / "cli" / f"{shared}.py")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("DEFINE_") and node.args
                and isinstance(node.args[0], ast.Constant)):
            name = node.args[0].value
            names.add(name)
            if node.func.attr == "DEFINE_bool" or node.func.attr == "DEFINE_boolean":
                names.add(f"no{name}")
        if (isinstance(node, ast.ImportFrom) and node.module
                and node.module.startswith("hjax.cli.")
                and any(a.name == "main" for a in node.names)):
            names |= _defined_flags(_module_file(node.module))
    return names


def _documented_commands():
    """(doc, command, flags given to it) for every documented command line."""
    for doc in DOCS:
        for line in _doc_text(doc).splitlines():
            for m in COMMAND.finditer(line):
                command = m.group(1) or m.group(2)
                rest = re.split(r"[`;|#)]|&&|\s\(", line[m.end():])[0]
                flags = re.findall(r"(?<![\w-])--(\w+)", rest)
                yield doc, command, flags


def test_documented_commands_exist_and_take_the_flags_given():
    commands = list(_documented_commands())
    assert len(commands) > 20                     # the scan finds the docs' commands
    bad = []
    for doc, command, flags in commands:
        path = _module_file(command)
        if not path.exists():
            bad.append(f"{_rel(doc)}: {command} does not exist")
            continue
        defined = _defined_flags(path) | ABSL_FLAGS
        bad += [f"{_rel(doc)}: {command} has no --{f}" for f in flags if f not in defined]
    assert not bad, bad


def test_documented_dotted_hjax_names_resolve():
    bad = []
    for doc in DOCS:
        for m in re.finditer(r"`(hjax(?:\.\w+)+)", doc.read_text()):
            parts = m.group(1).split(".")
            if parts[:2] == ["hjax", "cli"] and len(parts) > 2 and (
                    ROOT / "hjax" / "cli" / f"{parts[2]}.py").exists():
                # Command modules define absl flags on import (two would clash): read them.
                source = (ROOT / "hjax" / "cli" / f"{parts[2]}.py").read_text()
                if len(parts) > 3 and not re.search(rf"^(def |class )?{parts[3]}\b", source,
                                                    re.M):
                    bad.append(f"{_rel(doc)}: {m.group(1)}")
                continue
            obj, i = None, len(parts)
            while i > 0:                          # the longest importable prefix ...
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ModuleNotFoundError:
                    i -= 1
            try:
                for attr in parts[i:]:            # ... then attributes
                    obj = getattr(obj, attr)
            except AttributeError:
                bad.append(f"{_rel(doc)}: {m.group(1)}")
    assert not bad, f"documented names that do not exist: {bad}"


def test_readme_states_the_generated_block_options_architecture_md_gives():
    readme = (ROOT / "README.md").read_text()
    marker = re.search(r"<!-- report:begin (.*?) \(experiments/report.py\) -->", readme).group(1)
    stated = re.search(r"The README's block is\s+`([^`]*)`",
                       (ROOT / "docs" / "architecture.md").read_text())
    assert stated and stated.group(1) == marker, (stated and stated.group(1), marker)


CLI_FILES = sorted((ROOT / "hjax" / "cli").glob("*.py")) + sorted(
    (ROOT / "experiments").glob("*.py"))


@pytest.mark.parametrize("path", CLI_FILES, ids=lambda p: _rel(p))
def test_help_text_keeps_its_line_continuations(path):
    # A backslash at a line's end in a plain docstring joins the lines: the usage examples
    # that --help prints would lose their breaks. Such docstrings must be raw strings.
    tree = ast.parse(path.read_text())
    if not (tree.body and isinstance(tree.body[0], ast.Expr)
            and isinstance(tree.body[0].value, ast.Constant)):
        return
    source = ast.get_source_segment(path.read_text(), tree.body[0].value)
    assert "\\\n" not in source or source[:1] in "rR", (
        f"{_rel(path)}: the docstring continues lines with a backslash; make it r\"\"\"...\"\"\"")


def test_no_reference_a_reader_cannot_look_up():
    # Issue numbers and documents outside the repository mean nothing to a reader of a
    # checkout; docs, code comments and --help text say what they mean instead.
    pattern = re.compile(r"\bissue \d+|\bdesign card\b|\bSPEC\b(?:\.md)?")
    files = DOCS + [p for d in ("hjax", "experiments", "tests") for p in (ROOT / d).rglob("*.py")]
    hits = [f"{_rel(p)}:{n}" for p in files if p != pathlib.Path(__file__)
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_every_experiments_shim_has_its_python_m_name():
    # README: every command line is `python -m hjax.cli.<name>` with experiments/<name>.py
    # as a thin shim (the benchmark scripts are not command lines of the package).
    for shim in sorted((ROOT / "experiments").glob("*.py")):
        if "from hjax.cli." in shim.read_text():
            assert (ROOT / "hjax" / "cli" / shim.name).exists(), _rel(shim)
