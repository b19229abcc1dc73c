"""hjax.cli: the command lines (``python -m hjax.cli.<name>``), the only layer that parses
flags, prints errors and exits. User errors are one line on stderr and exit code 2; a
missing optional dependency is one line naming the extra that installs it, exit code 1.
Messages on stderr start ``error:``, ``warning:`` or ``note:`` (docs/architecture.md).

Importing this package changes no process-wide state: the excepthook is installed only in a
process started as a command, and logging is configured only while a command runs
(:func:`run_main`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from hjax.data.download import FetchError
from hjax.data.mnist import MnistUnavailableError
from hjax.errors import (ConfigError, check_choice, check_positive,  # noqa: F401  (re-exported)
                         ensure_writable_dir)


# Library code raises ConfigError; here it is a usage error (one line, exit 2).
UsageError = ConfigError


# Top-level modules the command lines import that `pip install hjax` alone does not bring:
# module -> (distribution, extra of pyproject.toml that installs it). tests/test_packaging.py
# checks that this table agrees with pyproject.toml.
OPTIONAL_MODULES = {
    "absl": ("absl-py", "experiments"),
    "flax": ("flax", "experiments"),
    "grain": ("grain", "experiments"),
    "PIL": ("pillow", "experiments"),
    "matplotlib": ("matplotlib", "experiments"),
    "tensorflow_datasets": ("tensorflow-datasets", "experiments"),
    "orbax": ("orbax-checkpoint", "experiments"),
    "submitit": ("submitit", "experiments"),
    "tqdm": ("tqdm", "experiments"),
}


def _command_name() -> str:
    name = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv else ""))[0]
    return name if name and name not in ("-c", "-m", "__main__") else "this command"


def missing_dependency_message(error: BaseException) -> str | None:
    """One line for a ModuleNotFoundError of an optional dependency; None for anything else.

    Only the module named by the error counts: a dependency's own broken import (some other
    module missing inside it) keeps its traceback.
    """
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    top = error.name.split(".")[0]
    if top not in OPTIONAL_MODULES:
        return None
    dist, extra = OPTIONAL_MODULES[top]
    return (f"error: {dist} is needed for {_command_name()} and is not installed: "
            f"pip install 'hjax[{extra}]' (or pip install {dist})")


def _missing_dependency_hook(previous):
    # A command line's module-level imports run before run_main, so a missing optional
    # dependency there ends the process uncaught; print one line for it instead of a traceback.
    # Any other uncaught exception is passed on unchanged (exit code 1 either way).
    def hook(kind, error, tb):
        message = missing_dependency_message(error)
        if message is None:
            previous(kind, error, tb)
        else:
            print(message, file=sys.stderr)
    return hook


_EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "experiments")


def _started_as_a_command() -> bool:
    """Whether this process runs one of hjax's command lines: ``python -m hjax.cli.<name>``
    (while runpy imports this package, ``sys.argv[0]`` is ``-m``) or a script under
    experiments/ (each imports hjax.cli before anything optional)."""
    if sys.argv[:1] == ["-m"]:
        orig = list(getattr(sys, "orig_argv", ()))
        at = orig.index("-m") + 1 if "-m" in orig else len(orig)
        return at < len(orig) and orig[at].startswith("hjax.cli.")
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return bool(main) and os.path.dirname(os.path.abspath(main)) == _EXPERIMENTS


if _started_as_a_command():
    sys.excepthook = _missing_dependency_hook(sys.excepthook)


# What each level's records start with on stderr (docs/architecture.md, "Messages").
MESSAGE_PREFIXES = {logging.DEBUG: "debug", logging.INFO: "note", logging.WARNING: "warning",
                    logging.ERROR: "error", logging.CRITICAL: "error"}


def with_prefix(prefix: str, message: str) -> str:
    """``prefix: message``, unless the message starts with a prefix of its own (a library
    warning may say ``note: --overwrite: moved ...``)."""
    if message.startswith(tuple(f"{p}: " for p in MESSAGE_PREFIXES.values())):
        return message
    return f"{prefix}: {message}"


def print_warning(message: str) -> None:
    """The ``warn`` callback commands pass to library code: ``warning: <message>`` on stderr."""
    print(with_prefix("warning", message), file=sys.stderr, flush=True)


class MessageFormatter(logging.Formatter):
    """A log record as the command lines print messages: ``warning: <message>``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)          # the message (and a traceback, if any)
        return with_prefix(MESSAGE_PREFIXES.get(record.levelno, record.levelname.lower()), text)


class _StderrHandler(logging.Handler):
    # sys.stderr looked up per record, not kept: a command run in-process (the tests' `cli`
    # fixture) writes to the stderr of the moment.
    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:           # as logging.StreamHandler: report the failure, never raise
            self.handleError(record)


@contextlib.contextmanager
def command_logging(level: int = logging.WARNING):
    """While a command runs, the "hjax" loggers print to stderr as ``warning: <message>``
    (:class:`MessageFormatter`) instead of reaching the root logger, whose handler a
    dependency may have set (``WARNING:hjax.data:...``); the logger is restored afterwards."""
    log = logging.getLogger("hjax")
    saved = log.handlers[:], log.level, log.propagate
    handler = _StderrHandler()
    handler.setFormatter(MessageFormatter())
    log.handlers, log.propagate = [handler], False
    log.setLevel(level)
    try:
        yield
    finally:
        log.handlers, log.propagate = saved[0], saved[2]
        log.setLevel(saved[1])


def exit_usage(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(flag_values, argv, caller: dict | None = None) -> list[str]:
    """Parse absl flags; returns the leftover argv. A parse error is one line and exit 2.

    ``--help`` / ``-h`` prints the calling CLI module's docstring and its own flags and exits
    0 (``--helpfull`` adds absl's flags): parsing by hand loses absl.app's help handling. The
    CLI module is found from the caller's globals, so a thin script under experiments/ that
    only calls ``main()`` shows the flags of the module that defines them.
    """
    from absl import flags

    caller = caller if caller is not None else sys._getframe(1).f_globals
    wants_help = [a for a in argv[1:] if a in ("--help", "-h", "--helpfull", "-?")]
    if wants_help:
        doc = (caller.get("__doc__") or "").strip()
        name = caller.get("__name__", "__main__")
        own = flag_values.flags_by_module_dict().get(name)
        text = (flag_values.get_help() if "--helpfull" in wants_help or not own
                else flag_values.module_help(name))
        print(f"{doc}\n\nflags:{text}" if doc else f"flags:{text}")
        sys.exit(0)
    try:
        return flag_values(argv)
    except flags.Error as e:
        exit_usage(str(e).splitlines()[0])


def run_main(flag_values, argv, body, *, interrupted: str | None = None) -> None:
    """Parse absl flags and run ``body()``; user mistakes become one line and exit code 2.

    Flags are parsed by hand rather than by ``absl.app.run``, whose parse errors print usage
    text and exit 1 (see :func:`parse_flags`). Missing MNIST, or a missing optional
    dependency (:data:`OPTIONAL_MODULES`, named with the extra that installs it), or a failed
    download (:class:`hjax.data.download.FetchError`), is one line
    and exit 1; Ctrl-C prints ``interrupted`` (what was kept) and exits 130. hjax's log
    records print as ``warning: ...`` lines meanwhile (:func:`command_logging`).
    """
    parse_flags(flag_values, argv, sys._getframe(1).f_globals)
    try:
        with command_logging():
            body()
    except UsageError as e:
        exit_usage(str(e))
    except (MnistUnavailableError, FetchError) as e:
        # Data that cannot be had (MNIST, a dataset or weights download): one line, exit 1.
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
    except ModuleNotFoundError as e:
        message = missing_dependency_message(e)
        if message is None:
            raise
        print(message, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"interrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)
