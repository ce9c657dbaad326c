#!/usr/bin/env python
"""Render the controller's cross-attention maps as PNG figures.

The policy writes one ``.npz`` file per prediction call when attention-map recording is on
(format: ``controller/viz/attention_io.py``; never pickled). For each file this writes, into
``--out-dir`` (default ``ATTN_MAPS_DIR/visualizations``):

* ``<file>_sample<b>_overview.png`` -- rows = DiT blocks, columns = denoising steps x {head,
  wrist} token grids (mean over heads, one colour scale), plus the attention mass on each token
  part (head / wrist / state / time);
* ``<file>_sample<b>_images.png`` -- the head image, its mask, the wrist image and the attention
  overlaid on them;
* with ``--per-head``: blocks x heads grids at one denoising step, and per-head part masses.

Examples::

    python attention_map_visualizer.py --attn-maps-dir runs/x/attention_maps
    python attention_map_visualizer.py --attn-maps-dir DIR --blocks ::2 --steps all --sample all
    python attention_map_visualizer.py --attn-maps-dir DIR --per-head --per-head-step 0

All the work is done by :mod:`controller.viz.attention`; see ``--help`` for every option (the old
underscore spellings such as ``--attn_maps_dir`` are still accepted, with a deprecation note).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run from anywhere: make the repository importable without installing it.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("MPLBACKEND", "Agg")

from controller.viz.attention import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
