"""DomainBed sweeps: make, launch, and check job lists (`python -m hjax.cli.sweep --help` for the flags)."""

from hjax.cli.sweep import main

if __name__ == "__main__":
    main()
