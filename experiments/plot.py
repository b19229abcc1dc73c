"""Alignment figures from tracked ColoredMNIST runs (`python -m hjax.cli.plot --help` for the flags)."""

from hjax.cli.plot import main

if __name__ == "__main__":
    main()
