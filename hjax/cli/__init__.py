"""hjax.cli: the command lines (``python -m hjax.cli.<name>``), the only layer that parses
flags, prints errors and exits. User errors are one line on stderr and exit code 2; a
missing optional dependency is one line naming the extra that installs it, exit code 1."""

from __future__ import annotations

import os
import sys

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


def _excepthook(kind, error, tb, _previous=sys.excepthook):
    # A command line's module-level imports run before run_main, so a missing optional
    # dependency there ends the process uncaught; print one line for it instead of a traceback.
    # Any other uncaught exception is passed on unchanged (exit code 1 either way).
    message = missing_dependency_message(error)
    if message is None:
        _previous(kind, error, tb)
    else:
        print(message, file=sys.stderr)


sys.excepthook = _excepthook


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
    dependency (:data:`OPTIONAL_MODULES`, named with the extra that installs it), is one line
    and exit 1; Ctrl-C prints ``interrupted`` (what was kept) and exits 130.
    """
    from hjax.data.mnist import MnistUnavailableError
    parse_flags(flag_values, argv, sys._getframe(1).f_globals)
    try:
        body()
    except UsageError as e:
        exit_usage(str(e))
    except MnistUnavailableError as e:
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
