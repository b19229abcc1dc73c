"""Transfer measure of trained ColoredMNIST models (`python -m hjax.cli.transferability --help` for the flags)."""

from hjax.cli.transferability import main

if __name__ == "__main__":
    main()
