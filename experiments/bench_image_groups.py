r"""Benchmark: trials per hour of a PACS-shaped DomainBed group, R image trials as one program
against R single jobs, the decoded cache resident on the device against the host pipeline,
float32 against bfloat16.

    python experiments/bench_image_groups.py [--arch=resnet18] [--image_size=32] \
        [--batch_size=8] [--trials=1,2,4,8] [--data=resident,host] \
        [--dtypes=float32,bfloat16] [--steps=5] [--per_class=4] [--output=FILE.md]

What is timed is what a job runs (hjax.protocols.domainbed.image_programs.image_program:
the step with its batch, the evaluation of every split), on a generated PACS-layout tree
(7 classes x 4 domains x ``--per_class`` JPEGs; or ``--data_dir``), test env 0, so 3
training domains x B images per trial and step. R trials differ in trial seed and hparams
draw (``--batch_size`` fixed, as a group's members share it). Step: median of ``--steps``
timed steps after a warm-up step (the first one compiles; its time is reported apart).
Evaluation: the second pass over every split (the first compiles).

Trials per hour: R x 3600 / (5001 x step + 18 x evaluation at PACS's 9,991 images), i.e.
DomainBed's PACS job (5001 steps, every split evaluated at 17 checkpoints and the last
step), the measured evaluation scaled linearly from the tree's image count to 9,991. The
reference, in the same run: R single jobs, one after another (R = 1 of the same data path
and dtype). "resident / host" compares the step on the resident cache with the step fed by
the host pipeline (from the decoded cache, in-process: ``--workers=0``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from hjax.cli import exit_usage, parse_flags
from hjax.io.provenance import machine_line

from _bench import emit_table

FLAGS = flags.FLAGS
flags.DEFINE_string("algorithm", "hgp", "a DomainBed algorithm")
flags.DEFINE_string("arch", "resnet18", "resnet18 or resnet50")
flags.DEFINE_integer("image_size", 32, "input resolution (DomainBed: 224)")
flags.DEFINE_integer("batch_size", 8, "images per training domain per step")
flags.DEFINE_list("trials", ["1", "2", "4", "8"], "group sizes R")
flags.DEFINE_list("data", ["resident", "host"], "data paths: resident, host")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes")
flags.DEFINE_string("batching", "auto", "trial batching: auto (vmap on GPU, unroll on CPU), "
                    "vmap or unroll")
flags.DEFINE_integer("steps", 5, "timed steps per configuration")
flags.DEFINE_integer("per_class", 4, "generated JPEGs per (domain, class)")
flags.DEFINE_string("data_dir", None, "a folder holding PACS/<domain>/<class>/<image> "
                    "instead of the generated tree")
flags.DEFINE_string("output", None, "also write the Markdown table here")

PACS_IMAGES = 9991
STEPS, EVALUATIONS = 5001, 18


def _tree(root: Path, per_class: int, size: int) -> Path:
    """A PACS-layout tree of smooth coloured JPEGs (``size`` px, a class colour each)."""
    import numpy as np
    from PIL import Image

    from hjax.data.images import IMAGE_DATASETS
    info = IMAGE_DATASETS["pacs"]
    rng = np.random.default_rng(0)
    for d in info.domains:
        for c, name in enumerate(info.classes):
            folder = root / info.dir / d / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                base = rng.integers(0, 256, 3) * 0.5 + 40 * c
                ramp = np.linspace(0, 80, size)[None, :, None]
                pixels = np.clip(base + ramp + rng.normal(0, 12, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{k:03d}.jpg")
    return root


def _members(r: int, dtype: str, data_mode: str, data_dir: str, out: str):
    from hjax.protocols.domainbed.config import RunConfig, resolve_hparams
    from hjax.protocols.domainbed.identity import job_identity
    from hjax.protocols.domainbed.loop import Member
    from hjax.protocols.domainbed.programs import load_job_data
    members = []
    for t in range(r):
        config = RunConfig(dataset="pacs", algorithm=FLAGS.algorithm, test_envs=(0,),
                           output_dir=f"{out}/t{t}", trial_seed=t, hparams_seed=t,
                           hparams_overrides={"batch_size": FLAGS.batch_size},
                           data_dir=data_dir, arch=FLAGS.arch, image_size=FLAGS.image_size,
                           dtype=dtype, workers=0,
                           data_on_device="on" if data_mode == "resident" else "off")
        hp = resolve_hparams(config)
        members.append(Member(config, hp, job_identity(config, hp),
                              load_job_data(config, FLAGS.batch_size, lambda m: None), []))
    return members


def _measure(r: int, dtype: str, data_mode: str, data_dir: str, out: str) -> dict:
    import jax

    from hjax.protocols.domainbed import image_programs
    from hjax.protocols.domainbed.programs import example_images, make_model
    from hjax.protocols.domainbed.trainer import init_state
    from hjax.protocols.runs.members import stack
    members = _members(r, dtype, data_mode, data_dir, out)
    model = make_model(members[0].config, {"resnet_dropout": max(
        float(m.hp.get("resnet_dropout", 0.0)) for m in members)}, lambda m: None)
    states = [init_state(m.config.algorithm, model, m.hp, example_images(m.data),
                         len(m.data.train_idx), jax.random.key(t))
              for t, m in enumerate(members)]
    program = image_programs.image_program(members, model, FLAGS.batching, 0, lambda m: None)
    try:
        states = program.place(stack(states))
        t0 = time.perf_counter()
        states, logs = program.step(states)
        jax.block_until_ready(logs)
        first = time.perf_counter() - t0
        times = []
        for _ in range(FLAGS.steps):
            t0 = time.perf_counter()
            states, logs = program.step(states)
            jax.device_get(logs)                 # what the loop does after every step
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        program.accuracies(states.params)
        eval_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        program.accuracies(states.params)
        evaluation = time.perf_counter() - t0
    finally:
        program.close()
    images = sum(len(y) for _, y in members[0].data.eval_ins + members[0].data.eval_outs)
    step = statistics.median(times)
    job_s = STEPS * step + EVALUATIONS * evaluation * PACS_IMAGES / images
    return {"step": step, "first": first, "eval": evaluation, "eval_first": eval_first,
            "images": images, "per_hour": r * 3600 / job_s}


def main(argv=None):
    parse_flags(FLAGS, sys.argv if argv is None else argv)
    try:
        sizes = sorted({int(t) for t in FLAGS.trials})
    except ValueError:
        exit_usage(f"--trials={','.join(FLAGS.trials)} must be positive integers")
    if not sizes or sizes[0] < 1 or FLAGS.steps < 1 or FLAGS.batch_size < 2:
        exit_usage("need --trials >= 1, --steps >= 1 and --batch_size >= 2")
    for name, values, allowed in (("data", FLAGS.data, ("resident", "host")),
                                  ("dtypes", FLAGS.dtypes, ("float32", "bfloat16"))):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            exit_usage(f"--{name}={','.join(values)}: each must be one of {', '.join(allowed)}")
    if 1 not in sizes:
        sizes = [1] + sizes                      # the single job: the reference
    work = tempfile.mkdtemp(prefix="hjax-bench-groups-")
    data_dir = FLAGS.data_dir or str(_tree(Path(work) / "data", FLAGS.per_class,
                                           -(-8 * FLAGS.image_size // 7)))
    results = {}
    for dtype in FLAGS.dtypes:
        for data_mode in FLAGS.data:
            for r in sizes:
                m = _measure(r, dtype, data_mode, data_dir, f"{work}/{dtype}-{data_mode}-{r}")
                results[dtype, data_mode, r] = m
                print(f"{dtype} {data_mode} R={r}: step {1e3 * m['step']:.0f} ms (first "
                      f"{m['first']:.1f} s), evaluation {m['eval']:.2f} s of {m['images']} "
                      f"images (first {m['eval_first']:.1f} s), {m['per_hour']:.2f} trials/h",
                      flush=True)
    lines = [f"PACS-shaped group: {FLAGS.algorithm}, {FLAGS.arch} at {FLAGS.image_size} px, "
             f"3 training domains x {FLAGS.batch_size} images per trial and step, trial "
             f"batching {FLAGS.batching}; step: median of {FLAGS.steps} steps after the "
             "first; trials per hour: R x 3600 / (5001 steps + 18 evaluations scaled to "
             f"9,991 images); on {machine_line()}.", "",
             "| dtype | data | R | step (all R trials) | first step (compile) | evaluation "
             "(images) | trials / hour | vs R single jobs | resident / host step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (dtype, data_mode, r), m in results.items():
        single = results[dtype, data_mode, 1]["per_hour"]
        other = results.get((dtype, "host" if data_mode == "resident" else "resident", r))
        ratio = ""
        if other is not None:
            resident_s = m["step"] if data_mode == "resident" else other["step"]
            host_s = other["step"] if data_mode == "resident" else m["step"]
            ratio = f"{resident_s / host_s:.2f}"
        lines.append(f"| {dtype} | {data_mode} | {r} | {1e3 * m['step']:.0f} ms | "
                     f"{m['first']:.1f} s | {m['eval']:.2f} s ({m['images']}) | "
                     f"{m['per_hour']:.2f} | {m['per_hour'] / single:.2f}x | {ratio} |")
    emit_table(lines, FLAGS.output)


if __name__ == "__main__":
    main()
