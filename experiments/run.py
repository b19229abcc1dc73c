"""Alias of experiments/colored_mnist.py, the design card's entry point (`python -m hjax.cli.colored_mnist --help` for the flags)."""

from hjax.cli.colored_mnist import main

if __name__ == "__main__":
    main()
