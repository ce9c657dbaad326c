"""Dataset formats: one reader (and writer) per on-disk format behind one interface.

See :mod:`controller.dataset.formats.base` for the contract. Built-in formats register themselves
when imported here (detection tries them in this order).
"""
from controller.dataset.formats.base import (MASK_MODES, EpisodeSink, EpisodeSource, SourceOptions,
                                             detect_format, format_names, open_sink, open_source,
                                             register_format, register_sink, sink_names)

# built-in formats (each module calls register_format / register_sink at import)
# -- one import line per format module below; edit by adding a line, never rewrite this block --
import controller.dataset.formats.zarr_source  # noqa: E402,F401  (zarr)
import controller.dataset.formats.act_h5  # noqa: E402,F401  (act_h5: ACT/DexVLA HDF5 reader + sink)
import controller.dataset.formats.deployment  # noqa: E402,F401  (deployment recordings, read-only)
import controller.dataset.formats.lerobot_v3  # noqa: E402,F401  (lerobot: reader + sink)

__all__ = ["MASK_MODES", "EpisodeSink", "EpisodeSource", "SourceOptions", "detect_format", "format_names",
           "open_sink", "open_source", "register_format", "register_sink", "sink_names"]
