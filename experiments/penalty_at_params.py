"""Penalty terms of saved ColoredMNIST params (`python -m hjax.cli.penalty_at_params --help` for the flags)."""

from hjax.cli.penalty_at_params import main

if __name__ == "__main__":
    main()
