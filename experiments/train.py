"""Alias of experiments/domainbed_train.py, i.e. ``python -m hjax.cli.train`` or ``python -m
hjax.cli.domainbed_train`` (``--help`` for the flags)."""

from hjax.cli.domainbed_train import main

if __name__ == "__main__":
    main()
