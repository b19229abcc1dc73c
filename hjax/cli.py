"""User-error handling shared by the experiment scripts: one line on stderr, exit code 2."""

from __future__ import annotations

import sys


class UsageError(ValueError):
    """A user mistake (bad flag value, unwritable path): reported in one line, exit code 2."""


def exit_usage(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise UsageError(f"--{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


def check_positive(name: str, value) -> None:
    if value is None or value < 1:
        raise UsageError(f"--{name}={value} must be a positive integer")


def ensure_writable_dir(path: str, flag: str = "output_dir") -> str:
    """Create ``path`` if needed and prove it writable, or raise a one-line UsageError."""
    import os
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--{flag}={path!r} is not writable ({e.strerror})") from None
    return path


def parse_flags(flag_values, argv) -> list[str]:
    """Parse absl flags; returns the leftover argv. A parse error is one line and exit 2.

    ``--help`` / ``-h`` prints the script's docstring and its own flags and exits 0
    (``--helpfull`` adds absl's flags): parsing by hand loses absl.app's help handling.
    """
    from absl import flags

    wants_help = [a for a in argv[1:] if a in ("--help", "-h", "--helpfull", "-?")]
    if wants_help:
        main = sys.modules.get("__main__")
        doc = (getattr(main, "__doc__", None) or "").strip()
        text = (flag_values.get_help() if "--helpfull" in wants_help
                else flag_values.main_module_help())
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
    parse_flags(flag_values, argv)
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
