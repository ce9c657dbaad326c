"""DexVLA's action expert: ScaleDP (adaLN-Zero DiT over the action chunk) or a 1-D conditional UNet,
reasoning FiLM, and the diffusion wrapper (see docs/dexvla.md)."""
from controller.model.scaledp.expert import HEADS, ScaleDPExpert, build_head, hold_last_valid
from controller.model.scaledp.film import FiLM, ReasoningFiLM, masked_mean
from controller.model.scaledp.scaledp import PRESETS, ScaleDP, ScaleDPConfig, count_parameters
from controller.model.scaledp.unet import ConditionalUNet1D, UNetConfig

__all__ = ["HEADS", "PRESETS", "ConditionalUNet1D", "FiLM", "ReasoningFiLM", "ScaleDP", "ScaleDPConfig",
           "ScaleDPExpert", "UNetConfig", "build_head", "count_parameters", "hold_last_valid", "masked_mean"]
