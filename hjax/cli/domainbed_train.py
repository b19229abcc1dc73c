r"""One DomainBed training job (docs/protocols.md), resumable.

    python experiments/train.py --dataset=rotated_mnist --algorithm=hutchinson \
        --test_envs=0 --hparams_seed=0 --trial_seed=0 --output_dir=runs/rmnist-hutch-0

Appends one JSON line per checkpoint to <output_dir>/results.jsonl (step, every env's in/out
accuracy, the loss terms averaged since the previous checkpoint, seconds per step, hparams,
args, run_id, identity, provenance) and writes <output_dir>/done (JSON: status, run_id,
identity) at the end. Re-running the same command after a kill resumes from the last
checkpoint; re-running a finished job does nothing. A folder holding another job's files (a
different run identity: other settings, hparams or data) is refused with exit 2, unless
--overwrite moves them aside.
"""

from __future__ import annotations

import sys

from absl import flags

from hjax.cli import UsageError, distributed, run_main
from hjax.cli.progress import MODES, Progress
from hjax.protocols.domainbed import config
from hjax.protocols.domainbed.hparams import ALGORITHMS

FLAGS = flags.FLAGS
D = config.default
flags.DEFINE_string("dataset", "domainbed_colored_mnist",
                    "domainbed_colored_mnist, rotated_mnist, or an image dataset: pacs, vlcs, "
                    "office_home, terra_incognita, domain_net, pacs_mini")
flags.DEFINE_string("algorithm", "erm", ", ".join(ALGORITHMS))
flags.DEFINE_list("test_envs", ["0"], "comma-separated test environment indices")
flags.DEFINE_integer("hparams_seed", D("hparams_seed"), "0 = default hparams; otherwise a random draw")
flags.DEFINE_integer("trial_seed", D("trial_seed"),
                     "seeds the data, the in/out splits, init and minibatches")
flags.DEFINE_integer("steps", D("steps"), "training steps")
flags.DEFINE_integer("checkpoint_freq", None, "steps between evaluations / checkpoints "
                     "(default: DomainBed's per dataset: "
                     f"{config.MNIST_CHECKPOINT_FREQ} for MNIST, "
                     f"{config.default_checkpoint_freq('pacs')} for the image datasets, "
                     f"{config.default_checkpoint_freq('domain_net')} for DomainNet)")
flags.DEFINE_string("output_dir", None, "where results.jsonl, the checkpoint and done go")
flags.DEFINE_integer("batch_size", None, "override: examples per training env per step")
flags.DEFINE_float("lr", None, "override: Adam learning rate")
flags.DEFINE_string("hparams", None, "JSON object of further hparam overrides")
flags.DEFINE_float("holdout_fraction", D("holdout_fraction"),
                   "fraction of each env held out as 'out'")
flags.DEFINE_float("width_multiplier", D("width_multiplier"),
                   "MNIST_CNN widths x this (tests use small ones)")
flags.DEFINE_bool("fake_data", D("fake_data"),
                  "small synthetic MNIST instead of the real one (tests)")
flags.DEFINE_integer("stop_after_step", None, "testing: stop after this step, as if killed")
flags.DEFINE_string("data_dir", None, "image datasets: the folder holding <DatasetDir>/<domain>/"
                    "<class>/<image> (default $HJAX_DATA_DIR, else ~/.cache/hjax)")
flags.DEFINE_enum("arch", D("arch"), list(config.ARCHS), "image datasets: the ResNet")
flags.DEFINE_integer("image_size", D("image_size"),
                     "image datasets: input resolution (DomainBed: 224)")
flags.DEFINE_enum("dtype", D("dtype"), list(config.DTYPES),
                  "image datasets: compute dtype (bfloat16 for accelerators; params stay float32)")
flags.DEFINE_string("pretrained", None, "image datasets: torchvision ResNet weights to start from: "
                    "'imagenet' (torchvision's ImageNet weights of --arch, fetched into the "
                    "data folder when missing), or a file (.npz or .safetensors; .pth). "
                    "Default: random init (DomainBed uses ImageNet weights)")
flags.DEFINE_integer("workers", D("workers"),
                     "image datasets: input-pipeline worker processes (0 = none)")
distributed.define_flags(__name__)
flags.DEFINE_bool("overwrite", False,
                  "when --output_dir holds another job's results, done marker or checkpoint, "
                  "move them aside into <output_dir>/replaced-<time>/ and start afresh "
                  "(default: refuse, exit 2)")
flags.DEFINE_enum("progress", "auto", list(MODES),
                  "progress line on stderr (step, loss, examples or images per second, ETA "
                  "after compilation): auto = only on a terminal")
flags.DEFINE_enum("augment", D("augment"), list(config.AUGMENT_ON),
                  "image datasets: augment on the device (JAX, default) or on the host (the "
                  "PIL reference)")
flags.DEFINE_bool("decoded_cache", D("decoded_cache"), "image datasets: decode PACS/VLCS/"
                  "OfficeHome/TerraIncognita once into <data_dir>/hjax_decoded (memory-mapped)")
flags.DEFINE_enum("data_on_device", D("data_on_device"), list(config.DATA_ON_DEVICE),
                  "image datasets: hold the decoded cache on the device(s) and gather each "
                  "step's batch there (the host sends indices only): auto = when it fits in "
                  "half the free device memory (said at the start); off = the host pipeline")
flags.DEFINE_string("vmap_jobs", None, "a job-list file written by sweep.py --vmap_trials: "
                    "train those jobs as one vmapped program (other flags are ignored)")

# The flags that are job settings (config.from_settings reads them); the others say how to run.
SETTINGS = ("dataset", "algorithm", "test_envs", "hparams_seed", "trial_seed", "steps",
            "checkpoint_freq", "output_dir", "batch_size", "lr", "hparams", "holdout_fraction",
            "width_multiplier", "fake_data", "stop_after_step", "data_dir", "arch",
            "image_size", "dtype", "pretrained", "workers", "overwrite", "progress", "augment",
            "decoded_cache", "data_on_device", *distributed.NAMES)


def config_from_flags(f):
    return config.from_settings({name: getattr(f, name) for name in SETTINGS})


def main(argv=None):
    argv = sys.argv if argv is None else argv
    def body():
        if FLAGS.vmap_jobs and FLAGS.distributed:
            raise UsageError("--vmap_jobs runs on one process; --distributed is for single "
                             "jobs")
        job = None
        if not FLAGS.vmap_jobs:         # bad settings before waiting for other processes
            from hjax.protocols.domainbed.run import job_hparams
            job = config_from_flags(FLAGS)
            job_hparams(job)
        speaks = distributed.join(FLAGS)
        progress = Progress(FLAGS.progress if speaks else "off")

        def log(message):
            if speaks:
                progress.clear()
                print(message, flush=True)

        if FLAGS.vmap_jobs:
            from hjax.protocols.domainbed.run import run_group
            from hjax.protocols.domainbed.vmapped import load_spec_file
            try:
                configs, batching = load_spec_file(FLAGS.vmap_jobs)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UsageError(f"--vmap_jobs={FLAGS.vmap_jobs!r} is not a readable job "
                                 f"list ({type(e).__name__}: {e})") from None
            return run_group(configs, log=log, batching=batching,
                             progress=progress if progress.enabled else None)
        from hjax.protocols.domainbed.run import run
        run(job, log=log, progress=progress if progress.enabled else None)
    run_main(FLAGS, argv, body,
             interrupted="re-run the same command to resume from the last checkpoint")


if __name__ == "__main__":
    main()
