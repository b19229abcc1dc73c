"""Alias of experiments/colored_mnist.py, i.e. ``python -m hjax.cli.run`` or ``python -m
hjax.cli.colored_mnist`` (``--help`` for the flags)."""

from hjax.cli.colored_mnist import main

if __name__ == "__main__":
    main()
