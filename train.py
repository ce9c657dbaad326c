"""Train the DexGraspVLA controller.

    python train.py --config-name train_dexgraspvla_controller_workspace [policy=paper|small|tiny]
        [task=grasp|sim_grasp] [key=value ...]

Multi-GPU / multi-node / multi-process CPU: use ``train.sh`` (accelerate launch).
The console (run directory, one line per epoch, the final checkpoint paths) is described in
docs/training.md.
"""
import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@hydra.main(version_base=None, config_path="controller/config",
            config_name="train_dexgraspvla_controller_workspace")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace

    if os.environ.get("RANK", "0") != "0":  # launched by torchrun/accelerate: only rank 0 logs INFO
        logging.getLogger().setLevel(logging.WARNING)
    OmegaConf.resolve(cfg)
    if cfg.get("policy_name") is None:
        cfg.policy_name = HydraConfig.get().runtime.choices.get("policy") or "custom"
    workspace = TrainDexGraspVLAControllerWorkspace(cfg, output_dir=HydraConfig.get().runtime.output_dir)
    workspace.run()


if __name__ == "__main__":
    main()
