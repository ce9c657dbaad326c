#!/usr/bin/env bash
# `make train-demo`: the research loop end to end on this machine, at a size that runs in under
# ~30 minutes on 2 CPU cores: collect expert demonstrations in the simulator, train the `small`
# controller on them with train.sh, evaluate it in closed loop, and visualise its attention maps.
# Sizes can be changed with environment variables (defaults in brackets):
#   EPISODES [60]  STEPS_PER_EPOCH [100]  EPOCHS [4]  EVAL_EPISODES [10]  OUT [outputs/train_demo]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export MUJOCO_GL="${MUJOCO_GL:-egl}"
EPISODES="${EPISODES:-60}"
STEPS_PER_EPOCH="${STEPS_PER_EPOCH:-100}"
EPOCHS="${EPOCHS:-4}"
EVAL_EPISODES="${EVAL_EPISODES:-10}"
OUT="${OUT:-outputs/train_demo}"
mkdir -p "$OUT"
DATA="$OUT/sim_grasp.zarr"

echo "[train-demo] 1/4 collecting $EPISODES expert episodes -> $DATA"
$PY -m sim.collect --out "$DATA" --episodes "$EPISODES" --split train --seed 0

echo "[train-demo] 2/4 training policy=small for $EPOCHS x $STEPS_PER_EPOCH steps"
./train.sh policy=small task=sim_grasp "task.dataset_paths=[$DATA]" "+task.dataset.cache_dir=$OUT/frame_cache" \
  task.dataset.val_ratio=0.05 logging.mode=offline training.num_epochs="$EPOCHS" \
  training.max_train_steps="$STEPS_PER_EPOCH" training.lr_warmup_steps=50 training.use_ema=true \
  training.rollout_every=0 training.seed=0 dataloader.num_workers=2 "hydra.run.dir=$OUT/run"

echo "[train-demo] 3/4 closed-loop evaluation on $EVAL_EPISODES held-out train-split scenes"
$PY -m sim.evaluate --checkpoint "$OUT/run/checkpoints/latest" --split train --episodes "$EVAL_EPISODES" \
  --seed 100000 --video 2 --out "$OUT/eval"

echo "[train-demo] 4/4 attention maps -> $OUT/run/attention_maps/visualizations"
$PY attention_map_visualizer.py --attn-maps-dir "$OUT/run/attention_maps" --quiet
echo "[train-demo] done: checkpoint $OUT/run/checkpoints/latest, videos and summary in $OUT/eval"
