"""IRM-protocol ColoredMNIST (correlation and label shift): every method, several restarts (`python -m hjax.cli.colored_mnist --help` for the flags)."""

from hjax.cli.colored_mnist import main

if __name__ == "__main__":
    main()
