"""The deployment defaults are declared once in code; the inference config must agree with them."""
from pathlib import Path

from omegaconf import OmegaConf

from controller.policy import defaults

ROOT = Path(__file__).resolve().parents[3]


def test_inference_config_uses_the_policy_defaults():
    cfg = OmegaConf.load(ROOT / "inference_utils" / "config" / "inference.yaml")
    assert cfg.controller.num_samples == defaults.NUM_SAMPLES
    assert cfg.controller.temporal_ensemble == defaults.TEMPORAL_ENSEMBLE_DECAY
    assert isinstance(defaults.NUM_SAMPLES, int) and defaults.NUM_SAMPLES >= 1
    assert defaults.TEMPORAL_ENSEMBLE_DECAY >= 0
