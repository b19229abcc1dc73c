"""Exact population-level penalties, correlation vs label shift (`python -m hjax.cli.label_shift_population --help` for the flags)."""

from hjax.cli.label_shift_population import main

if __name__ == "__main__":
    main()
