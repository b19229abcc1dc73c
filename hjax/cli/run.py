"""Alias of ``python -m hjax.cli.colored_mnist`` (the ColoredMNIST experiments), so that
``python -m hjax.cli.run`` matches ``experiments/run.py``; ``--help`` lists the flags."""

from hjax.cli.colored_mnist import main

if __name__ == "__main__":
    main()
