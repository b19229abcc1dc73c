r"""A DomainBed sweep: launch | status | delete_incomplete.

    python experiments/sweep.py launch --datasets=domainbed_colored_mnist,rotated_mnist \
        --algorithms=erm,hgp,hutchinson --n_hparams=20 --n_trials=3 --single_test_envs \
        --steps=5001 --checkpoint_freq=100 --launcher=local --output_dir=SWEEP

One train.py process per job; a finished job (done marker) is skipped by every launcher and
an interrupted one resumes from its checkpoint, so ``launch`` can be re-run at any time.

Test-env sets: by default (and explicitly with --single_test_envs) every job holds out one
environment, which training-domain and oracle selection need. --with_pairs adds every pair
of environments, which leave-one-domain-out selection also needs (DomainBed's own default
is singles plus pairs; its --single_test_envs keeps only the singles). The two flags exclude
each other.

Launchers (--launcher): ``local`` runs the jobs one after another; ``local_parallel`` runs
--max_workers (default 2) at once, each job's output in <job dir>/train.log; ``submitit``
submits a Slurm job array (--slurm_partition, --slurm_account, --slurm_qos, --timeout_min,
--gpus_per_job, --cpus_per_job, --mem_gb; --max_workers caps the running array tasks;
--nosubmitit_wait submits and returns); ``submitit_local`` (or ``submitit`` with
--submitit_local) runs them through submitit's LocalExecutor in waves of --max_workers.
Submitit logs go to --submitit_dir (default <output_dir>/submitit).

The sweep folder: ``launch`` saves its settings (the flags that make the job list) in
<output_dir>/sweep.json; ``status`` and ``delete_incomplete`` read them from there, so they
need only --output_dir (flags given must agree with a saved launch; refused otherwise). A
folder without sweep.json (launched by an older hjax) needs the launch's flags repeated.

Ctrl-C on ``launch``: the running jobs are interrupted (each resumes from its checkpoint at the
next launch), reported as interrupted, and the sweep exits 130 with one line.

--preset=cpu_mini is the CPU mini-sweep (about 30 minutes on 2 cores; see PRESETS and the
README); flags given explicitly override a preset's values.

--vmap_trials groups the pending jobs that share shapes (same dataset, algorithm, test envs,
steps, batch size and probe count; any trial seeds, hparams seeds and other hparam values) and
launches each group as ONE unit: a ``train.py --vmap_jobs`` process that trains its jobs as one
vmapped program (hjax.protocols.domainbed.vmapped), writing each job's usual directory. Fix
--batch_size to make random hparam draws share a shape. Group logs and job lists go to
<output_dir>/vmap_groups/.
"""

from __future__ import annotations

import os
import sys


from absl import flags

from hjax.cli import UsageError, check_choice, exit_usage, parse_flags
from hjax.protocols.domainbed.launchers import LAUNCHERS

COMMANDS = ("launch", "status", "delete_incomplete")
# --preset=NAME sets these flags unless they are given on the command line.
PRESETS = {
    # ~30 minutes on a 2-core CPU: DomainBed ColoredMNIST, 3 algorithms x 3 test envs x
    # 2 hparams (defaults and one random draw, batch fixed at 64 so that each pair shares a
    # program) x 1 trial; a quarter-width MNIST_CNN (16-32-32-32), 301 steps, evaluated at
    # steps 0 and 300 (evaluating all 70,000 images takes ~30 s per model on such a CPU and
    # dominates the cost).
    "cpu_mini": {"datasets": ["domainbed_colored_mnist"],
                 "algorithms": ["erm", "hgp", "hutchinson"], "n_hparams": 2, "n_trials": 1,
                 "single_test_envs": True, "steps": 301, "checkpoint_freq": 300,
                 "width_multiplier": 0.25, "batch_size": 64, "vmap_trials": True},
    # A smoke test of the image path on the 40 real PACS images that `make pacs-mini` runs
    # (not a result): ERM, HGP and Hutchinson, every test env and pair (so that all three
    # selection methods have runs), default hparams, ResNet-18 at 64 px from random weights,
    # 5 steps.
    "pacs_mini": {"datasets": ["pacs_mini"], "algorithms": ["erm", "hgp", "hutchinson"],
                  "n_hparams": 1, "n_trials": 1, "with_pairs": True, "steps": 5,
                  "checkpoint_freq": 4, "arch": "resnet18", "image_size": 64,
                  "batch_size": 8, "workers": 0, "launcher": "local_parallel"},
}
FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "sweep directory (one sub-directory per job)")
flags.DEFINE_string("preset", None, "a named set of flag values (flags given explicitly win): "
                    + ", ".join(PRESETS))
flags.DEFINE_list("datasets", ["domainbed_colored_mnist"], "datasets")
flags.DEFINE_list("algorithms", ["erm"], "algorithms")
flags.DEFINE_integer("n_hparams", 20, "hparams seeds n_hparams_from .. n_hparams-1 (0 = defaults)")
flags.DEFINE_integer("n_hparams_from", 0, "first hparams seed")
flags.DEFINE_integer("n_trials", 3, "trial seeds 0 .. n_trials-1")
flags.DEFINE_bool("single_test_envs", False, "state explicitly that jobs hold out one test "
                  "env each, which they do anyway unless --with_pairs is given (the flag then "
                  "refuses --with_pairs)")
flags.DEFINE_bool("with_pairs", False, "also every pair of test envs (leave-one-out selection)")
flags.DEFINE_string("launcher", "local", "how jobs run: " + " | ".join(LAUNCHERS))
flags.DEFINE_integer("max_workers", None, "jobs at once: local_parallel and submitit_local "
                     "(default 2), Slurm array parallelism for submitit (default unlimited)")
flags.DEFINE_bool("submitit_local", False, "with --launcher=submitit: submitit's LocalExecutor")
flags.DEFINE_string("submitit_dir", None, "submitit logs (default <output_dir>/submitit)")
flags.DEFINE_bool("submitit_wait", True, "submitit: wait for the jobs and report failures")
flags.DEFINE_string("slurm_partition", None, "submitit: Slurm partition")
flags.DEFINE_string("slurm_account", None, "submitit: Slurm account")
flags.DEFINE_string("slurm_qos", None, "submitit: Slurm quality of service")
flags.DEFINE_integer("timeout_min", 720, "submitit: time limit per job, minutes")
flags.DEFINE_integer("gpus_per_job", 0, "submitit: GPUs per job")
flags.DEFINE_integer("cpus_per_job", None, "submitit: CPUs per job (default submitit's)")
flags.DEFINE_float("mem_gb", None, "submitit: memory per job, GB (default the cluster's)")
flags.DEFINE_integer("steps", None, "train.py --steps (default: train.py's 5001)")
flags.DEFINE_integer("checkpoint_freq", None, "train.py --checkpoint_freq")
flags.DEFINE_float("width_multiplier", None, "train.py --width_multiplier")
flags.DEFINE_integer("batch_size", None, "train.py --batch_size")
flags.DEFINE_bool("fake_data", False, "train.py --fake_data (tests)")
flags.DEFINE_string("data_dir", None, "train.py --data_dir (image datasets; $HJAX_DATA_DIR "
                    "keeps it out of the job names)")
flags.DEFINE_string("arch", None, "train.py --arch (image datasets: resnet18 | resnet50)")
flags.DEFINE_integer("image_size", None, "train.py --image_size (image datasets)")
flags.DEFINE_string("dtype", None, "train.py --dtype (float32 | bfloat16)")
flags.DEFINE_string("pretrained", None, "train.py --pretrained (torchvision ResNet weights)")
flags.DEFINE_integer("workers", None, "train.py --workers (input-pipeline processes per job)")
flags.DEFINE_string("data_on_device", None, "train.py --data_on_device (image datasets: "
                    "auto | on | off)")
flags.DEFINE_bool("overwrite", False, "launch: jobs not done with their own run identity "
                  "move another job's files in their folder aside (train.py --overwrite) "
                  "instead of failing; jobs done with their identity are still skipped")
flags.DEFINE_bool("vmap_trials", False, "run the jobs that share shapes (dataset, algorithm, "
                  "test envs, batch size, steps; any seeds and other hparams) as one vmapped "
                  "program each: one train.py --vmap_jobs process per group")
flags.DEFINE_string("trial_batching", "auto", "with --vmap_trials: vmap (trials side by "
                    "side in every op), unroll (independent per-trial ops in the one program) "
                    "or auto (vmap on GPU/TPU, unroll on CPU, where batched convs are slow)")
flags.DEFINE_integer("max_vmap_trials", None, "with --vmap_trials: at most this many jobs per "
                     "group (default: no limit; bounds memory)")


def apply_preset(f) -> None:
    if f.preset is None:
        return
    check_choice("preset", f.preset, tuple(PRESETS))
    for name, value in PRESETS[f.preset].items():
        if not f[name].present:
            setattr(f, name, value)


# The flags that make a sweep's job list: what sweep.json saves for each launch.
SETTINGS = ("datasets", "algorithms", "n_hparams", "n_hparams_from", "n_trials", "with_pairs",
            "steps", "checkpoint_freq", "width_multiplier", "batch_size", "fake_data",
            "data_dir", "arch", "image_size", "dtype", "pretrained", "workers", "data_on_device")


def launch_settings(f) -> dict:
    """The job-list settings of these flags, as JSON values (what sweep.json saves)."""
    return {k: list(getattr(f, k)) if k in ("datasets", "algorithms") else getattr(f, k)
            for k in SETTINGS}


def given_settings(f) -> dict:
    """The job-list settings given on the command line (or by --preset)."""
    preset = PRESETS.get(f.preset, {})
    given = {k: v for k, v in launch_settings(f).items() if f[k].present or k in preset}
    if f.single_test_envs:
        given["with_pairs"] = False
    return given


def settings_flags(settings: dict):
    """An object with the flags' attributes, from saved settings (for :func:`build_jobs`)."""
    import types
    return types.SimpleNamespace(**{**launch_settings(FLAGS), **settings,
                                    "vmap_trials": False, "single_test_envs": False})


def saved_jobs(f):
    """The job list of ``status`` / ``delete_incomplete``: from the sweep folder's saved
    launches (those the given flags agree with), else from the flags, which must be given."""
    from hjax.protocols.domainbed import jobs as jobs_lib
    launches = jobs_lib.saved_launches(f.output_dir)
    given = given_settings(f)
    if launches is None:
        if not given:
            raise UsageError(f"--output_dir={f.output_dir} has no {jobs_lib.SWEEP_FILE} (not a "
                             f"sweep folder, or launched by an older hjax): repeat the "
                             f"launch's flags (--datasets, --algorithms, --n_hparams, ...)")
        return build_jobs(f)
    jobs, seen = [], set()
    for settings in jobs_lib.select_launches(launches, given):
        for job in build_jobs(settings_flags(settings)):
            if job not in seen:
                seen.add(job)
                jobs.append(job)
    return jobs


def build_jobs(f):
    from hjax.protocols.domainbed.hparams import ALGORITHMS
    from hjax.protocols.domainbed.jobs import make_jobs
    from hjax.protocols.domainbed.config import DATASETS
    for d in f.datasets:
        if d not in DATASETS:
            raise UsageError(f"--datasets: {d!r} is not valid; choose from: {', '.join(DATASETS)}")
    for a in f.algorithms:
        if a not in ALGORITHMS:
            raise UsageError(f"--algorithms: {a!r} is not valid; choose from: "
                             f"{', '.join(ALGORITHMS)}")
    if f.single_test_envs and f.with_pairs:
        raise UsageError("--single_test_envs and --with_pairs exclude each other")
    if f.n_trials < 1 or not 0 <= f.n_hparams_from < f.n_hparams:
        raise UsageError("need --n_trials >= 1 and 0 <= --n_hparams_from < --n_hparams")
    extra = {k: getattr(f, k) for k in ("steps", "checkpoint_freq", "width_multiplier",
                                         "batch_size", "data_dir", "arch", "image_size",
                                         "dtype", "pretrained", "workers", "data_on_device")
             if getattr(f, k) is not None}
    if f.fake_data:
        extra["fake_data"] = "true"
    return make_jobs(f.datasets, f.algorithms, f.n_hparams, f.n_trials, f.n_hparams_from,
                     f.with_pairs, extra)


def check_launcher(f) -> str:
    check_choice("launcher", f.launcher, LAUNCHERS)
    launcher = "submitit_local" if f.launcher == "submitit" and f.submitit_local else f.launcher
    if f.submitit_local and not launcher.startswith("submitit"):
        raise UsageError(f"--submitit_local needs --launcher=submitit (got {f.launcher})")
    if f.max_workers is not None and f.max_workers < 1:
        raise UsageError(f"--max_workers={f.max_workers} must be a positive integer")
    if launcher.startswith("submitit"):
        if f.timeout_min < 1 or f.gpus_per_job < 0 or (f.cpus_per_job or 1) < 1:
            raise UsageError("need --timeout_min >= 1, --gpus_per_job >= 0, --cpus_per_job >= 1")
        import importlib.util
        if importlib.util.find_spec("submitit") is None:
            raise UsageError(f"--launcher={f.launcher} needs the submitit package "
                             "(pip install -r requirements.txt)")
    return launcher


def run_launcher(launcher, jobs, f) -> int:
    from hjax.protocols.domainbed import launchers
    log = lambda m: print(m, flush=True)  # noqa: E731
    if launcher == "local":
        return launchers.launch_local(jobs, f.output_dir, log=log, overwrite=f.overwrite)
    if launcher == "local_parallel":
        return launchers.launch_local_parallel(jobs, f.output_dir, f.max_workers or 2, log=log,
                                               overwrite=f.overwrite)
    return launchers.launch_submitit(
        jobs, f.output_dir, local=launcher == "submitit_local", folder=f.submitit_dir,
        max_workers=f.max_workers, wait=f.submitit_wait, log=log, overwrite=f.overwrite,
        partition=f.slurm_partition, account=f.slurm_account, qos=f.slurm_qos,
        timeout_min=f.timeout_min, gpus_per_job=f.gpus_per_job, cpus_per_job=f.cpus_per_job,
        mem_gb=f.mem_gb)


def status_line(jobs, root) -> str:
    from hjax.protocols.domainbed.jobs import other_job_folders, status_counts
    counts = status_counts(jobs, root)
    line = f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    others = other_job_folders(jobs, root)
    if others:
        line += f" (and {len(others)} job folders of other settings, e.g. {others[0]})"
    return line


def print_status(jobs, root):
    print(status_line(jobs, root), flush=True)


def main(argv=None):
    argv = sys.argv if argv is None else argv
    rest = parse_flags(FLAGS, argv)
    try:
        if len(rest) != 2 or rest[1] not in COMMANDS:
            raise UsageError(f"give exactly one command: {' | '.join(COMMANDS)}")
        if not FLAGS.output_dir:
            raise UsageError("--output_dir is required")
        apply_preset(FLAGS)
        command = rest[1]
        jobs = build_jobs(FLAGS) if command == "launch" else saved_jobs(FLAGS)
        launcher = check_launcher(FLAGS)
        from hjax.protocols.domainbed import jobs as jobs_lib
        if FLAGS.max_vmap_trials is not None and FLAGS.max_vmap_trials < 1:
            raise UsageError(f"--max_vmap_trials={FLAGS.max_vmap_trials} must be a positive "
                             "integer")
        if command == "launch":
            os.makedirs(FLAGS.output_dir, exist_ok=True)
            jobs_lib.record_launch(FLAGS.output_dir, launch_settings(FLAGS))
            units = jobs
            if FLAGS.vmap_trials:
                from hjax.protocols.domainbed.vmapped import plan_groups
                check_choice("trial_batching", FLAGS.trial_batching, ("auto", "vmap", "unroll"))
                units = plan_groups(jobs, FLAGS.output_dir, FLAGS.max_vmap_trials,
                                    FLAGS.trial_batching)
                print(f"--vmap_trials: {sum(len(g.jobs) for g in units)} pending jobs in "
                      f"{len(units)} vmapped group(s)", flush=True)
            all_done = FLAGS.overwrite and all(
                jobs_lib.job_state(FLAGS.output_dir, j) == "done" for j in jobs)
            try:
                failed = run_launcher(launcher, units, FLAGS)
            except KeyboardInterrupt:
                print(f"interrupted: re-run the same command to resume "
                      f"({status_line(jobs, FLAGS.output_dir)})", file=sys.stderr, flush=True)
                sys.exit(130)
            print_status(jobs, FLAGS.output_dir)
            if all_done:
                print("every job is done, so nothing ran: --overwrite never replaces a "
                      "finished job's results; to run done jobs again, delete their folders "
                      "(or launch into a new --output_dir)", flush=True)
            sys.exit(1 if failed else 0)
        elif command == "status":
            print_status(jobs, FLAGS.output_dir)
        else:
            n = jobs_lib.delete_incomplete(jobs, FLAGS.output_dir)
            print(f"deleted {n} incomplete job directories")
    except UsageError as e:
        exit_usage(str(e))
    except KeyboardInterrupt:
        print("interrupted: no job was started", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        exit_usage(f"--output_dir={FLAGS.output_dir!r}: {e.strerror}")


if __name__ == "__main__":
    main()
