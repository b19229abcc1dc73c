"""Benchmark: decoded + augmented training images per second of the grain input pipeline.

    python experiments/bench_pipeline.py [--image_size=224] [--workers=0,1,2]
        [--data_dir=DIR] [--output=FILE.md]

Runs ``hjax.data.image_pipeline.train_batches`` (DomainBed's training augmentation: decode,
RandomResizedCrop, flip, color jitter, random grayscale, normalise; float32 [E, B, H, W, 3]) with
each worker count (0 = in the calling process). Per worker count: one iterator, ``--warmup``
batches first (worker start-up included there, not timed), then ``--repeats`` timed runs of
``--batches`` batches each; the table gives the median images/s over the runs (min-max in
brackets). Images come from ``--data_dir`` (a DomainBed-layout folder
``<domain>/<class>/<image>``, e.g. ``~/.cache/hjax/pacs_mini``) or, by default, a generated
tree of PACS-sized (227 x 227) JPEGs.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags
from PIL import Image

from hjax.cli import parse_flags
from hjax.data.images import scan_image_folder
from hjax.data.images.pipeline import train_batches
from hjax.io.results import write_atomic

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 224, "output image side")
flags.DEFINE_list("workers", ["0", "1", "2"], "worker process counts to time")
flags.DEFINE_integer("batch_size", 32, "images per domain per batch")
flags.DEFINE_integer("batches", 3, "batches per timed run")
flags.DEFINE_integer("repeats", 3, "timed runs per worker count (median reported)")
flags.DEFINE_integer("warmup", 2, "untimed batches first (includes worker start-up)")
flags.DEFINE_string("data_dir", None, "DomainBed-layout folder (default: generated JPEGs)")
flags.DEFINE_integer("source_size", 227, "side of the generated JPEGs (PACS: 227)")
flags.DEFINE_integer("domains", 3, "training domains (generated tree, or the first N found)")
flags.DEFINE_string("output", None, "also write the Markdown table here")


def generate_tree(root: Path, domains: int, size: int, classes: int = 7,
                  per_class: int = 6) -> Path:
    """Smooth random color fields plus noise, saved as quality-75 JPEGs (photo-like size)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for d in range(domains):
        for c in range(classes):
            folder = root / f"domain{d}" / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                a = rng.uniform(0, 255, (3, 3))
                img = (a[:, 0, None, None] * xx + a[:, 1, None, None] * yy
                       + a[:, 2, None, None] * np.sin(6 * np.pi * xx * yy))
                img = img.transpose(1, 2, 0) / 2 + rng.normal(0, 12, (size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(
                    folder / f"img{k}.jpg", quality=75)
    return root


def time_workers(envs, workers: int) -> tuple[list[float], float]:
    """(images/s of each timed run, seconds to the first batch)."""
    per_batch = len(envs) * FLAGS.batch_size
    t0 = time.perf_counter()
    with train_batches(envs, FLAGS.batch_size, FLAGS.image_size, seed=0,
                       workers=workers) as it:
        next(it)
        first = time.perf_counter() - t0
        for _ in range(FLAGS.warmup - 1):
            next(it)
        rates = []
        for _ in range(FLAGS.repeats):
            t = time.perf_counter()
            for _ in range(FLAGS.batches):
                images, _ = next(it)
            rates.append(per_batch * FLAGS.batches / (time.perf_counter() - t))
        assert images.shape[2:] == (FLAGS.image_size, FLAGS.image_size, 3)
    return rates, first


def main(argv=None):
    parse_flags(FLAGS, sys.argv if argv is None else argv)
    for name in ("image_size", "batch_size", "batches", "repeats", "warmup", "domains"):
        if getattr(FLAGS, name) < 1:
            print(f"error: --{name}={getattr(FLAGS, name)} must be a positive integer",
                  file=sys.stderr)
            sys.exit(2)
    try:
        workers = [int(w) for w in FLAGS.workers]
    except ValueError:
        print(f"error: --workers={','.join(FLAGS.workers)} must be integers", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="hjax-bench-pipeline-") as tmp:
        if FLAGS.data_dir:
            root, source = Path(FLAGS.data_dir).expanduser(), FLAGS.data_dir
        else:
            root = generate_tree(Path(tmp) / "tree", FLAGS.domains, FLAGS.source_size)
            source = (f"generated {FLAGS.source_size}x{FLAGS.source_size} JPEGs "
                      f"({FLAGS.domains} domains x 7 classes x 6)")
        ds = scan_image_folder(root)
        envs = ds.environments()[:FLAGS.domains]
        results = {}
        for w in workers:
            rates, first = time_workers(envs, w)
            results[w] = (rates, first)
            print(f"workers={w}: {statistics.median(rates):.0f} images/s "
                  f"(runs {', '.join(f'{r:.0f}' for r in rates)}; first batch after "
                  f"{first:.1f} s)", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores visible, load average "
               f"{load:.1f} at the end, Python {platform.python_version()}")
    lines = [f"DomainBed training augmentation to {FLAGS.image_size}x{FLAGS.image_size} float32, "
             f"{len(envs)} domains x {FLAGS.batch_size} images per batch; {source}; on "
             f"{machine}. Median of {FLAGS.repeats} runs of {FLAGS.batches} batches after "
             f"{FLAGS.warmup} warm-up batches (min-max in brackets).",
             "", "| workers | images/s (median) | per batch | first batch (incl. start-up) |",
             "|---|---|---|---|"]
    for w, (rates, first) in results.items():
        med = statistics.median(rates)
        label = f"{w} (in-process)" if w == 0 else str(w)
        lines.append(f"| {label} | {med:.0f} [{min(rates):.0f}-{max(rates):.0f}] | "
                     f"{1e3 * len(envs) * FLAGS.batch_size / med:.0f} ms | {first:.1f} s |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if FLAGS.output:
        write_atomic(FLAGS.output, table)


if __name__ == "__main__":
    main()
