"""DexVLA's action expert: ScaleDP (adaLN-Zero DiT over the action chunk), reasoning FiLM, and the
diffusion wrapper (see docs/dexvla.md)."""
from controller.model.scaledp.expert import ScaleDPExpert, hold_last_valid
from controller.model.scaledp.film import FiLM, ReasoningFiLM, masked_mean
from controller.model.scaledp.scaledp import PRESETS, ScaleDP, ScaleDPConfig, count_parameters

__all__ = ["PRESETS", "ScaleDP", "ScaleDPConfig", "ScaleDPExpert", "FiLM", "ReasoningFiLM",
           "count_parameters", "hold_last_valid", "masked_mean"]
