"""Convert a torchvision ResNet state_dict into an .npz that hjax reads without torch.

    python -m hjax.cli.convert_weights --input=resnet50.pth --output=resnet50.npz [--arch=resnet50]

--input is a torchvision ``resnet18`` / ``resnet50`` state_dict: .pth (needs torch), or
.safetensors / .npz (no torch needed). It is checked key by key against --arch, then written
as an .npz of the featurizer's tensors under their torchvision keys (float32; ``fc.*`` and
``num_batches_tracked`` dropped), which ``hjax.models.torchvision_weights.load_torchvision``
reads. A file that does not fit --arch is one line naming the first bad key, exit code 2.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from hjax.cli import UsageError, run_main
from hjax.models import torchvision_weights as tw
from hjax.models.resnet import ARCHS

FLAGS = flags.FlagValues()     # its own: tests call main() in-process
flags.DEFINE_string("input", None, "torchvision state_dict: .pth, .safetensors or .npz",
                    flag_values=FLAGS)
flags.DEFINE_string("output", None, "the .npz to write", flag_values=FLAGS)
flags.DEFINE_enum("arch", "resnet50", list(ARCHS), "the architecture the weights are for",
                  flag_values=FLAGS)


def run(flags_) -> str:
    if not flags_.input or not flags_.output:
        raise UsageError("give --input (a torchvision state_dict file) and --output (an .npz)")
    if not flags_.output.endswith(".npz"):
        raise UsageError(f"--output={flags_.output!r} must end in .npz")
    out_dir = os.path.dirname(os.path.abspath(flags_.output))
    if not os.path.isdir(out_dir):
        raise UsageError(f"--output={flags_.output!r}: folder {out_dir} does not exist")
    params, stats = tw.load_torchvision(flags_.input, flags_.arch)
    state = tw.to_torchvision(params, stats, flags_.arch)
    try:
        tw.save_npz(flags_.output, state)
    except OSError as e:
        raise UsageError(f"--output={flags_.output!r} is not writable ({e.strerror})") from None
    print(f"wrote {flags_.output} ({flags_.arch}, {len(state)} tensors)")
    return flags_.output


def main(argv=None):
    """``argv`` as sys.argv (program name first); None reads the command line."""
    argv = sys.argv if argv is None else argv
    FLAGS.unparse_flags()                        # a fresh parse on every in-process call
    run_main(FLAGS, argv, lambda: run(FLAGS))


if __name__ == "__main__":
    main()
