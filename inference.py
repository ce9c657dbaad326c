"""DexGraspVLA inference: ``python inference.py [--manual] [--prompt "..."] [overrides...]``.

See ``python inference.py --help`` and :mod:`inference_utils.runtime` (configuration in
``inference_utils/config/``). Exit code 0 = normal end, 1 = fault, 2 = bad config, 130 = interrupted.
"""
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

from inference_utils.runtime.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
