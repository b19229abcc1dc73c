"""The README's reproduction tables from results/ (`python -m hjax.cli.report --help` for the flags)."""

from hjax.cli.report import main

if __name__ == "__main__":
    main()
