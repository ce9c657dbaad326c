"""DexVLA's vision-language backbone (Qwen2-VL) wrapper; see docs/dexvla.md."""
from controller.model.dexvla.backbone import ANSWER_SUFFIX, PRESETS, DexVLABackbone

__all__ = ["ANSWER_SUFFIX", "PRESETS", "DexVLABackbone"]
