"""Upgrade results written before run identities (`python -m hjax.cli.upgrade_results --help`)."""

from hjax.cli.upgrade_results import main

if __name__ == "__main__":
    main()
