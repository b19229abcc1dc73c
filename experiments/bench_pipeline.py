r"""Benchmark: the image input pipeline in its steady state, and a whole training job against
the step alone.

    python experiments/bench_pipeline.py [--image_size=224] [--workers=0,1,2]
        [--data_dir=DIR] [--output=FILE.md]                       # --mode=pipeline
    python experiments/bench_pipeline.py --mode=end_to_end --arch=resnet18 --image_size=32 \
        --steps=201 --output=FILE.md

``--mode=pipeline`` (images from ``--data_dir``, a DomainBed-layout folder, or by default a
generated tree of PACS-sized 227 x 227 JPEGs):

1. Host work per image, in this process (one core): read + decode onto the fixed canvas
   (:func:`hjax.data.images.decode.decode_into`: all the host does on the device path),
   and, for reference, PIL decode + DomainBed's augmentation to float32 (the host path).
2. Images/s of the uint8 batches (``train_canvases``) per worker count, steady state: after
   a warm-up that fills every worker's buffer, it times at least 3 x (workers x buffer)
   batches, so batches already waiting in the buffers cannot be most of what is timed.
   ``--pil_workers`` times the PIL path (float32 batches) the same way.
3. The device augmentation alone (``augment_batch`` jitted on the default device): images/s,
   compile time apart.

``--mode=end_to_end``: a generated PACS-layout tree (4 domains x 7 classes x
``--per_class`` JPEGs of 227 px), ``experiments/train.py --dataset=pacs`` run for ``--steps``
steps (evaluation of every split at each checkpoint included) once per ``--augment``
setting, beside ``experiments/bench_resnet_step.py --algorithms=`` (ERM's host-batch step on
random images: no input pipeline at all), same arch, size, dtype, batch, in the same run. The
job's step time is the ``step_time`` of its last record: the mean of the steps since the
previous checkpoint (compile and evaluation excluded); its wall time includes everything.
On a CPU use a reduced --image_size and ResNet-18 and say so (the table records both).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from PIL import Image

from hjax.cli import exit_usage, parse_flags
from hjax.io.provenance import machine_line
from hjax.io.results import write_atomic

from _bench import call_seconds, compile_timed

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "pipeline", ["pipeline", "end_to_end"], "what to time")
flags.DEFINE_integer("image_size", 224, "output image side")
flags.DEFINE_list("workers", ["0", "1", "2"], "worker process counts to time")
flags.DEFINE_list("pil_workers", [], "worker counts for the PIL (host augmentation) path")
flags.DEFINE_integer("batch_size", 32, "images per domain per batch")
flags.DEFINE_integer("batches", 6, "timed batches per run (at least 3 x workers x buffer)")
flags.DEFINE_integer("buffer", 2, "batches each worker keeps ready")
flags.DEFINE_integer("repeats", 3, "timed runs per worker count (median reported)")
flags.DEFINE_integer("decode_images", 300, "images decoded for the host ms/image figure")
flags.DEFINE_string("data_dir", None, "DomainBed-layout folder (default: generated JPEGs)")
flags.DEFINE_integer("source_size", 227, "side of the generated JPEGs (PACS: 227)")
flags.DEFINE_integer("domains", 3, "training domains (generated tree, or the first N found)")
flags.DEFINE_integer("per_class", 6, "generated images per domain and class")
flags.DEFINE_string("output", None, "also write the Markdown table here")
# end_to_end
flags.DEFINE_enum("arch", "resnet18", ["resnet18", "resnet50"], "end_to_end: the ResNet")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "end_to_end: compute dtype")
flags.DEFINE_integer("steps", 201, "end_to_end: training steps of the job")
flags.DEFINE_integer("checkpoint_freq", 100, "end_to_end: steps between evaluations")
flags.DEFINE_list("augment", ["device"], "end_to_end: --augment settings to run (device, host)")
flags.DEFINE_integer("job_workers", 2, "end_to_end: the job's --workers")
flags.DEFINE_bool("reference_again", True, "end_to_end: measure the host-batch step again "
                  "after the jobs (the ratio is to the mean)")
flags.DEFINE_float("reference_ms", None, "end_to_end: the host-batch step in ms, if already "
                   "measured in this run (skips bench_resnet_step.py)")

ROOT = Path(__file__).resolve().parents[1]


def generate_tree(root: Path, domains, size: int, classes=7, per_class: int = 6) -> Path:
    """Smooth random color fields plus noise, saved as quality-75 JPEGs (photo-like size)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    domain_names = domains if not isinstance(domains, int) else [f"domain{d}"
                                                                  for d in range(domains)]
    class_names = classes if not isinstance(classes, int) else [f"class{c}"
                                                                for c in range(classes)]
    for d in domain_names:
        for c in class_names:
            folder = root / d / c
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                a = rng.uniform(0, 255, (3, 3))
                img = (a[:, 0, None, None] * xx + a[:, 1, None, None] * yy
                       + a[:, 2, None, None] * np.sin(6 * np.pi * xx * yy))
                img = img.transpose(1, 2, 0) / 2 + rng.normal(0, 12, (size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(
                    folder / f"img{k}.jpg", quality=75)
    return root


def host_ms_per_image(paths, canvas: int) -> tuple[float, float]:
    """(ms per image of decode onto the canvas, ms of PIL decode + train augmentation)."""
    from hjax.data.images import pil_transforms as T
    from hjax.data.images.decode import decode_into, decode_rgb
    n = FLAGS.decode_images
    sample = [paths[i % len(paths)] for i in range(n)]
    out = np.zeros((canvas, canvas, 3), np.uint8)
    for p in sample[:20]:                                  # warm the page cache
        decode_into(p, out)
    best_decode = best_pil = float("inf")
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        for p in sample:
            out[:] = 0
            decode_into(p, out)
        best_decode = min(best_decode, (time.perf_counter() - t) / n)
    rng = np.random.default_rng(0)
    m = max(1, n // 3)
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        for p in sample[:m]:
            T.train_transform(decode_rgb(p), FLAGS.image_size, rng)
        best_pil = min(best_pil, (time.perf_counter() - t) / m)
    return 1e3 * best_decode, 1e3 * best_pil


def time_iterator(make, workers: int) -> tuple[list[float], float, int]:
    """(images/s of each timed run, seconds to the first batch, batches per run)."""
    per_batch = FLAGS.domains * FLAGS.batch_size
    in_flight = max(1, workers) * FLAGS.buffer
    n = max(FLAGS.batches, 3 * in_flight)
    t0 = time.perf_counter()
    with make(workers) as it:
        next(it)
        first = time.perf_counter() - t0
        for _ in range(in_flight + 1):                     # fill every buffer, then drain
            next(it)
        rates = []
        for _ in range(FLAGS.repeats):
            t = time.perf_counter()
            for _ in range(n):
                next(it)
            rates.append(per_batch * n / (time.perf_counter() - t))
    return rates, first, n


def device_augment_rate(canvas: int) -> tuple[float, float]:
    """(images/s of the jitted training augmentation, compile seconds)."""
    from hjax.data.images.device_transforms import augment_batch
    e, b = FLAGS.domains, FLAGS.batch_size
    rng = np.random.default_rng(0)
    canvases = jnp.asarray(rng.integers(0, 256, (e, b, canvas, canvas, 3), np.uint8))
    hw = jnp.full((e, b, 2), min(FLAGS.source_size, canvas), jnp.int32)
    fn = jax.jit(lambda step, c, s: augment_batch(0, step, c, s, FLAGS.image_size))
    compiled, compile_s = compile_timed(fn, 0, canvases, hw)
    jax.block_until_ready(compiled(0, canvases, hw))
    times = [call_seconds(compiled, step, canvases, hw)[0]
             for step in range(1, 1 + 3 * FLAGS.repeats)]
    return e * b / statistics.median(times), compile_s


def pipeline_mode(tmp: Path) -> str:
    from hjax.data.images import scan_image_folder
    from hjax.data.images.decode import canvas_size
    from hjax.data.images.pipeline import train_batches, train_canvases
    if FLAGS.data_dir:
        root, source = Path(FLAGS.data_dir).expanduser(), FLAGS.data_dir
    else:
        root = generate_tree(tmp / "tree", FLAGS.domains, FLAGS.source_size,
                             per_class=FLAGS.per_class)
        source = (f"generated {FLAGS.source_size}x{FLAGS.source_size} JPEGs "
                  f"({FLAGS.domains} domains x 7 classes x {FLAGS.per_class})")
    envs = scan_image_folder(root).environments()[:FLAGS.domains]
    canvas = canvas_size(FLAGS.image_size)
    paths = [p for ps, _ in envs for p in ps]
    decode_ms, pil_ms = host_ms_per_image(paths, canvas)
    print(f"host: decode onto the {canvas} px canvas {decode_ms:.2f} ms/image/core; PIL "
          f"decode + augment to float32 {pil_ms:.2f} ms/image/core", flush=True)
    rows = []
    for label, counts, make in (
            ("uint8 canvases", FLAGS.workers, lambda w: train_canvases(
                envs, FLAGS.batch_size, canvas, seed=0, workers=w, buffer=FLAGS.buffer)),
            ("PIL float32", FLAGS.pil_workers, lambda w: train_batches(
                envs, FLAGS.batch_size, FLAGS.image_size, seed=0, workers=w,
                buffer=FLAGS.buffer))):
        for w in (int(c) for c in counts):
            rates, first, n = time_iterator(make, w)
            med = statistics.median(rates)
            rows.append((label, w, rates, first, n))
            print(f"{label}, workers={w}: {med:.0f} images/s (runs "
                  f"{', '.join(f'{r:.0f}' for r in rates)}; {n} batches each; first batch "
                  f"after {first:.1f} s)", flush=True)
    aug_rate, aug_compile = device_augment_rate(canvas)
    print(f"device augmentation: {aug_rate:.0f} images/s (compile {aug_compile:.1f} s)",
          flush=True)
    lines = [f"Input pipeline to {FLAGS.image_size} px, {len(envs)} domains x "
             f"{FLAGS.batch_size} images per batch; {source}; on {machine_line()}.", "",
             "Host work per image, one process (one core), best of "
             f"{FLAGS.repeats} passes over {FLAGS.decode_images} images:", "",
             "| host work | ms per image per core |", "|---|---|",
             f"| read + decode onto the {canvas} px uint8 canvas (device path) | "
             f"{decode_ms:.2f} |",
             f"| PIL decode + DomainBed augmentation to float32 (host path) | {pil_ms:.2f} |",
             "", f"Batches per second in the steady state: median of {FLAGS.repeats} runs "
             f"(min-max in brackets), each of at least 3 x workers x buffer ({FLAGS.buffer}) "
             "batches after the buffers were filled and drained once.", "",
             "| batches | workers | images/s (median) | per batch | timed batches per run | "
             "first batch (incl. start-up) |", "|---|---|---|---|---|---|"]
    for label, w, rates, first, n in rows:
        med = statistics.median(rates)
        lines.append(f"| {label} | {w}{' (in-process)' if w == 0 else ''} | {med:.0f} "
                     f"[{min(rates):.0f}-{max(rates):.0f}] | "
                     f"{1e3 * len(envs) * FLAGS.batch_size / med:.0f} ms | {n} | {first:.1f} s |")
    device = jax.devices()[0]
    lines += ["", f"Device augmentation alone (crop + resize + flip + jitter + grayscale + "
              f"normalise, jitted): {aug_rate:.0f} images/s on one {device.platform} device "
              f"({device.device_kind}), compile {aug_compile:.1f} s."]
    return "\n".join(lines) + "\n"


def run_quiet(cmd, timeout=3600) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def end_to_end_mode(tmp: Path) -> str:
    from hjax.data.images import IMAGE_DATASETS
    info = IMAGE_DATASETS["pacs"]
    data = tmp / "data"
    generate_tree(data / info.dir, info.domains, FLAGS.source_size, info.classes,
                  per_class=FLAGS.per_class)
    n_images = len(info.domains) * len(info.classes) * FLAGS.per_class
    def reference() -> float:
        out = run_quiet([sys.executable, str(ROOT / "experiments" / "bench_resnet_step.py"),
                         "--algorithms=", f"--arch={FLAGS.arch}",
                         f"--image_size={FLAGS.image_size}", f"--dtype={FLAGS.dtype}",
                         f"--batch_size={FLAGS.batch_size}", "--domains=3", "--rounds=3",
                         "--steps=5", "--memory_classes=0"])
        return float(re.search(r"erm_step_ms=([\d.]+)", out).group(1))

    # On a shared machine the load drifts during the jobs: the reference is taken before and
    # after them (unless given) and the ratio is to their mean.
    refs = [FLAGS.reference_ms] if FLAGS.reference_ms is not None else [reference()]
    print(f"host-batch step (bench_resnet_step.py, ERM): {refs[0]:.1f} ms", flush=True)
    rows = []
    for augment in FLAGS.augment:
        out_dir = tmp / f"job-{augment}"
        t = time.perf_counter()
        run_quiet([sys.executable, str(ROOT / "experiments" / "train.py"), "--dataset=pacs",
                   f"--data_dir={data}", "--algorithm=erm", "--test_envs=0",
                   f"--arch={FLAGS.arch}", f"--image_size={FLAGS.image_size}",
                   f"--dtype={FLAGS.dtype}", f"--steps={FLAGS.steps}",
                   f"--checkpoint_freq={FLAGS.checkpoint_freq}", f"--output_dir={out_dir}",
                   f"--workers={FLAGS.job_workers}", f"--batch_size={FLAGS.batch_size}",
                   f"--augment={augment}"])
        wall = time.perf_counter() - t
        records = [json.loads(x) for x in (out_dir / "results.jsonl").read_text().splitlines()]
        step_ms = 1e3 * records[-1]["step_time"]
        window = records[-1]["step"] - records[-2]["step"] if len(records) > 1 else 1
        rows.append((augment, step_ms, wall, window, len(records)))
        print(f"end to end, --augment={augment}: {step_ms:.1f} ms/step "
              f"({step_ms / refs[0]:.2f}x the host-batch step before), job wall {wall:.0f} s",
              flush=True)
    if FLAGS.reference_ms is None and FLAGS.reference_again:
        refs.append(reference())
        print(f"host-batch step again, after the jobs: {refs[1]:.1f} ms", flush=True)
    ref_ms = statistics.mean(refs)
    taken = (f"{refs[0]:.1f} ms before and {refs[1]:.1f} ms after the jobs, mean"
             if len(refs) > 1 else "measured in this run")
    lines = [f"A whole job against its step alone: `experiments/train.py --dataset=pacs "
             f"--algorithm=erm --test_envs=0` on a generated PACS-layout tree ({n_images} "
             f"JPEGs of {FLAGS.source_size} px), {FLAGS.arch} at {FLAGS.image_size} px "
             f"({FLAGS.dtype}), 3 domains x {FLAGS.batch_size} images per step, "
             f"{FLAGS.steps} steps, evaluation of all 8 splits every {FLAGS.checkpoint_freq}"
             f" steps, --workers={FLAGS.job_workers}; beside "
             "`bench_resnet_step.py --algorithms=` (ERM's step on random images already "
             f"on the device), same run; on {machine_line()}.", "",
             "| input path | step (mean of the last window) | relative to the host-batch step "
             "| job wall time (compile, evaluation, cache build included) |",
             "|---|---|---|---|",
             f"| host-batch step alone (no input pipeline; {taken}) | {ref_ms:.1f} ms | "
             "1.00x | - |"]
    names = {"device": "decode on the host, augment on the device (default)",
             "host": "decode + augment with PIL on the host (`--augment=host`)"}
    for augment, step_ms, wall, window, _ in rows:
        lines.append(f"| {names.get(augment, augment)} | {step_ms:.1f} ms ({window} steps) | "
                     f"{step_ms / ref_ms:.2f}x | {wall:.0f} s |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parse_flags(FLAGS, sys.argv if argv is None else argv)
    for name in ("image_size", "batch_size", "batches", "repeats", "domains", "buffer",
                 "decode_images", "steps", "checkpoint_freq", "per_class"):
        if getattr(FLAGS, name) < 1:
            exit_usage(f"--{name}={getattr(FLAGS, name)} must be a positive integer")
    try:
        [int(w) for w in FLAGS.workers + FLAGS.pil_workers]
    except ValueError:
        exit_usage(f"--workers={','.join(FLAGS.workers)} must be integers")
    bad = [a for a in FLAGS.augment if a not in ("device", "host")]
    if bad:
        exit_usage(f"--augment={','.join(FLAGS.augment)}: each must be device or host")
    with tempfile.TemporaryDirectory(prefix="hjax-bench-pipeline-") as tmp:
        fn = pipeline_mode if FLAGS.mode == "pipeline" else end_to_end_mode
        table = fn(Path(tmp))
    print("\n" + table)
    if FLAGS.output:
        write_atomic(FLAGS.output, table)


if __name__ == "__main__":
    main()
