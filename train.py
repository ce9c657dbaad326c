"""Train the DexGraspVLA controller.

    python train.py --config-name train_dexgraspvla_controller_workspace [policy=paper|small|tiny]
        [task=grasp|sim_grasp] [key=value ...]

Multi-GPU / multi-node / multi-process CPU: use ``train.sh`` (accelerate launch).
"""
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

    OmegaConf.resolve(cfg)
    workspace = TrainDexGraspVLAControllerWorkspace(cfg, output_dir=HydraConfig.get().runtime.output_dir)
    workspace.run()


if __name__ == "__main__":
    main()
