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

import json
import sys


from absl import flags

from hjax.cli import UsageError, run_main
from hjax.cli.progress import MODES, Progress

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "domainbed_colored_mnist",
                    "domainbed_colored_mnist, rotated_mnist, or an image dataset: pacs, vlcs, "
                    "office_home, terra_incognita, domain_net, pacs_mini")
flags.DEFINE_string("algorithm", "erm", "erm, irm, vrex, coral, fishr, iga, fish, sd, groupdro, "
                    "hgp, hutchinson, exact_diag")
flags.DEFINE_list("test_envs", ["0"], "comma-separated test environment indices")
flags.DEFINE_integer("hparams_seed", 0, "0 = default hparams; otherwise a random draw")
flags.DEFINE_integer("trial_seed", 0, "seeds the data, the in/out splits, init and minibatches")
flags.DEFINE_integer("steps", 5001, "training steps")
flags.DEFINE_integer("checkpoint_freq", None, "steps between evaluations / checkpoints "
                     "(default: DomainBed's per dataset: 100 for MNIST, 300 for the image "
                     "datasets, 1000 for DomainNet)")
flags.DEFINE_string("output_dir", None, "where results.jsonl, the checkpoint and done go")
flags.DEFINE_integer("batch_size", None, "override: examples per training env per step")
flags.DEFINE_float("lr", None, "override: Adam learning rate")
flags.DEFINE_string("hparams", None, "JSON object of further hparam overrides")
flags.DEFINE_float("holdout_fraction", 0.2, "fraction of each env held out as 'out'")
flags.DEFINE_float("width_multiplier", 1.0, "MNIST_CNN widths x this (tests use small ones)")
flags.DEFINE_bool("fake_data", False, "small synthetic MNIST instead of the real one (tests)")
flags.DEFINE_integer("stop_after_step", None, "testing: stop after this step, as if killed")
flags.DEFINE_string("data_dir", None, "image datasets: the folder holding <DatasetDir>/<domain>/"
                    "<class>/<image> (default $HJAX_DATA_DIR, else ~/.cache/hjax)")
flags.DEFINE_enum("arch", "resnet50", ["resnet18", "resnet50"], "image datasets: the ResNet")
flags.DEFINE_integer("image_size", 224, "image datasets: input resolution (DomainBed: 224)")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                  "image datasets: compute dtype (bfloat16 for accelerators; params stay float32)")
flags.DEFINE_string("pretrained", None, "image datasets: torchvision ResNet weights to start from "
                    "(.npz or .safetensors; .pth where torch is installed; see "
                    "python -m hjax.cli.convert_weights). Default: random init (DomainBed uses "
                    "ImageNet weights)")
flags.DEFINE_integer("workers", 2, "image datasets: input-pipeline worker processes (0 = none)")
flags.DEFINE_bool("overwrite", False,
                  "when --output_dir holds another job's results, done marker or checkpoint, "
                  "move them aside into <output_dir>/replaced-<time>/ and start afresh "
                  "(default: refuse, exit 2)")
flags.DEFINE_enum("progress", "auto", list(MODES),
                  "progress line on stderr (step, loss, examples or images per second, ETA "
                  "after compilation): auto = only on a terminal")
flags.DEFINE_enum("augment", "device", ["device", "host"], "image datasets: augment on the "
                  "device (JAX, default) or on the host (the PIL reference)")
flags.DEFINE_bool("decoded_cache", True, "image datasets: decode PACS/VLCS/OfficeHome/"
                  "TerraIncognita once into <data_dir>/hjax_decoded (memory-mapped)")
flags.DEFINE_string("vmap_jobs", None, "a job-list file written by sweep.py --vmap_trials: "
                    "train those jobs as one vmapped program (other flags are ignored)")


def _checkpoint_freq(f) -> int:
    if f.checkpoint_freq is not None:
        return f.checkpoint_freq
    from hjax.data.images import IMAGE_DATASETS
    info = IMAGE_DATASETS.get(f.dataset)
    return info.checkpoint_freq if info is not None else 100


def config_from_flags(f):
    from hjax.protocols.domainbed.run import RunConfig
    try:
        test_envs = tuple(int(e) for e in f.test_envs)
    except ValueError:
        raise UsageError(f"--test_envs={','.join(f.test_envs)} must be integers") from None
    overrides = {}
    if f.hparams:
        try:
            overrides = json.loads(f.hparams)
        except json.JSONDecodeError as e:
            raise UsageError(f"--hparams is not valid JSON ({e.msg})") from None
        if not isinstance(overrides, dict):
            raise UsageError("--hparams must be a JSON object")
    if f.batch_size is not None:
        overrides["batch_size"] = f.batch_size
    if f.lr is not None:
        overrides["lr"] = f.lr
    if not f.output_dir:
        raise UsageError("--output_dir is required")
    return RunConfig(dataset=f.dataset, algorithm=f.algorithm, test_envs=test_envs,
                     output_dir=f.output_dir, hparams_seed=f.hparams_seed,
                     trial_seed=f.trial_seed, steps=f.steps, checkpoint_freq=_checkpoint_freq(f),
                     hparams_overrides=overrides, holdout_fraction=f.holdout_fraction,
                     width_multiplier=f.width_multiplier, fake_data=f.fake_data,
                     stop_after_step=f.stop_after_step, data_dir=f.data_dir, arch=f.arch,
                     image_size=f.image_size, dtype=f.dtype, pretrained=f.pretrained,
                     workers=f.workers, overwrite=f.overwrite, progress=f.progress,
                     augment=f.augment, decoded_cache=f.decoded_cache)


def main(argv=None):
    argv = sys.argv if argv is None else argv
    def body():
        progress = Progress(FLAGS.progress)

        def log(message):
            progress.clear()
            print(message, flush=True)

        if FLAGS.vmap_jobs:
            from hjax.protocols.domainbed.vmapped import load_spec_file, run_group
            try:
                configs, batching = load_spec_file(FLAGS.vmap_jobs)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UsageError(f"--vmap_jobs={FLAGS.vmap_jobs!r} is not a readable job "
                                 f"list ({type(e).__name__}: {e})") from None
            return run_group(configs, log=log, batching=batching)
        from hjax.protocols.domainbed.run import run  # heavy imports after flag parsing
        run(config_from_flags(FLAGS), log=log, progress=progress if progress.enabled else None)
    run_main(FLAGS, argv, body,
             interrupted="re-run the same command to resume from the last checkpoint")


if __name__ == "__main__":
    main()
