"""torchvision ResNet weights -> .npz for hjax (`python -m hjax.cli.convert_weights --help` for the flags)."""

from hjax.cli.convert_weights import main

if __name__ == "__main__":
    main()
