"""DomainBed model-selection tables from a sweep's jobs (`python -m hjax.cli.collect_results --help` for the flags)."""

from hjax.cli.collect_results import main

if __name__ == "__main__":
    main()
