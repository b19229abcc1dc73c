"""The command lines' process-wide effects and their message convention.

Importing hjax.cli (or any command module) changes no process state: no excepthook, no
logging configuration. While a command runs, hjax's log records print on stderr as
``warning: ...`` lines (docs/architecture.md, "Messages"), and the logger is left as it was.
"""

from __future__ import annotations

import logging
import pathlib
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from hjax.cli import command_logging, print_warning, run_main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_importing_every_command_module_leaves_excepthook_and_logging_unchanged():
    code = textwrap.dedent("""
        import importlib, logging, pkgutil, sys
        from absl import flags

        def state():
            loggers = {name: (tuple(log.handlers), log.level, log.propagate, log.disabled)
                       for name, log in logging.root.manager.loggerDict.items()
                       if isinstance(log, logging.Logger)}
            root = logging.getLogger()
            return sys.excepthook, (tuple(root.handlers), root.level), loggers

        before = state()
        import hjax.cli
        names = ["hjax.cli." + m.name for m in pkgutil.iter_modules(hjax.cli.__path__)]
        for name in names:
            importlib.import_module(name)
            # Several command modules define the same flag names on absl's global FLAGS.
            for f in list(flags.FLAGS.flags_by_module_dict().get(name, [])):
                for n in (f.name, f.short_name):
                    if n and n in flags.FLAGS:
                        delattr(flags.FLAGS, n)
        after = state()
        assert after[0] is before[0], "sys.excepthook replaced"
        assert after[1] == before[1], ("root logger changed", before[1], after[1])
        unconfigured = ((), logging.NOTSET, True, False)     # a logger merely created
        changed = {n: s for n, s in after[2].items() if s != before[2].get(n, unconfigured)}
        assert not changed, ("loggers configured", changed)
        print(len(names))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout) >= 15                # every command module was imported


def _run(body, argv=("tool",)):
    run_main(flags.FlagValues(), list(argv), body)


def test_log_records_print_as_prefixed_lines_while_a_command_runs(capsys):
    root_lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            root_lines.append(record.getMessage())

    # A dependency that configured the root logger (grain calls logging.basicConfig) must
    # not print hjax's records again as "WARNING:hjax.data:...".
    root_handler = Collect()
    logging.getLogger().addHandler(root_handler)
    log = logging.getLogger("hjax")
    saved = log.handlers[:], log.level, log.propagate
    try:
        def body():
            logging.getLogger("hjax.data").warning("%s: cache is corrupt; rebuilding", "C")
            logging.getLogger("hjax").error("no space left")
            logging.getLogger("hjax").warning("note: --overwrite: moved the earlier files")
            logging.getLogger("hjax.data").info("MNIST: loaded from cache")   # below WARNING
        _run(body)
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert capsys.readouterr().err.splitlines() == [
        "warning: C: cache is corrupt; rebuilding", "error: no space left",
        "note: --overwrite: moved the earlier files"]
    assert root_lines == []
    assert (log.handlers, log.level, log.propagate) == saved        # restored afterwards


def test_logger_is_restored_when_the_command_fails(capsys):
    log = logging.getLogger("hjax")
    saved = log.handlers[:], log.level, log.propagate

    def body():
        raise ValueError("a bug")
    with pytest.raises(ValueError, match="a bug"):
        _run(body)
    assert (log.handlers, log.level, log.propagate) == saved
    with command_logging():
        assert log.propagate is False and len(log.handlers) == 1
    assert (log.handlers, log.level, log.propagate) == saved


def test_library_warnings_passed_to_a_command_get_one_prefix(capsys):
    print_warning("restart 3 diverged: non-finite loss at step 12; its record says so")
    print_warning("note: --overwrite: moved the earlier files of R to R/replaced-1")
    print_warning("warning: R/x.jsonl is unreadable; skipped")
    assert capsys.readouterr().err.splitlines() == [
        "warning: restart 3 diverged: non-finite loss at step 12; its record says so",
        "note: --overwrite: moved the earlier files of R to R/replaced-1",
        "warning: R/x.jsonl is unreadable; skipped"]
