"""Configuration errors that library code raises and the command lines report.

Library code never prints or exits: it raises :class:`ConfigError` (a bad setting, phrased
with the setting's command-line name) and :mod:`hjax.cli` turns it into one line on stderr
and exit code 2.
"""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A user mistake (bad setting, unwritable path): reported in one line, exit code 2."""


def check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"--{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


def check_positive(name: str, value) -> None:
    if value is None or value < 1:
        raise ConfigError(f"--{name}={value} must be a positive integer")


def ensure_writable_dir(path: str, flag: str = "output_dir") -> str:
    """Create ``path`` if needed and prove it writable, or raise a one-line ConfigError."""
    try:
        os.makedirs(path, exist_ok=True)
        # Named per process: the processes of a distributed run probe one folder at once.
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"--{flag}={path!r} is not writable ({e.strerror})") from None
    return path
