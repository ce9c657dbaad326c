"""Visualisation helpers for the controller.

Only the (numpy-only) attention-map file format is imported here, so the policy can write maps
without pulling in matplotlib; the figures live in :mod:`controller.viz.attention`.
"""
from .attention_io import (AttentionMapFileError, AttentionMaps, load_attention_maps,
                           save_attention_maps, to_uint8_hwc)

__all__ = ["AttentionMapFileError", "AttentionMaps", "load_attention_maps",
           "save_attention_maps", "to_uint8_hwc"]
