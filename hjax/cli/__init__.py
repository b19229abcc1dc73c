"""hjax.cli: the command lines (``python -m hjax.cli.<name>``), the only layer that parses
flags, prints errors and exits. User errors are one line on stderr and exit code 2."""

from __future__ import annotations

import sys

from hjax.errors import (ConfigError, check_choice, check_positive,  # noqa: F401  (re-exported)
                         ensure_writable_dir)


# Library code raises ConfigError; here it is a usage error (one line, exit 2).
UsageError = ConfigError


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
    text and exit 1 (see :func:`parse_flags`). Missing MNIST is one line and exit 1;
    Ctrl-C prints ``interrupted`` (what was kept) and exits 130.
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
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"interrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)
