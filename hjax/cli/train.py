"""Alias of ``python -m hjax.cli.domainbed_train`` (one DomainBed training job), so that
``python -m hjax.cli.train`` matches ``experiments/train.py``; ``--help`` lists the flags."""

from hjax.cli.domainbed_train import main

if __name__ == "__main__":
    main()
