#!/usr/bin/env bash
# Launch controller training with accelerate (DDP). Any extra arguments are Hydra overrides.
#
#   ./train.sh                                   # all local GPUs (or 1 CPU process without GPUs)
#   NUM_PROCESSES=2 ./train.sh policy=tiny ...   # 2 processes (gloo on CPU, NCCL on GPUs)
#   NUM_MACHINES=2 MACHINE_RANK=0 MAIN_PROCESS_IP=10.0.0.1 NUM_PROCESSES=16 ./train.sh   # multi-node
#
# Environment: NUM_PROCESSES (total over all machines; default: GPUs on this machine, or 1),
# NUM_MACHINES (1), MACHINE_RANK (0), MAIN_PROCESS_IP (127.0.0.1), MAIN_PROCESS_PORT (29500),
# CONFIG_NAME, PYTHON. Precision: training.mixed_precision (auto = bf16 on CUDA, fp32 on CPU).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
CONFIG_NAME="${CONFIG_NAME:-train_dexgraspvla_controller_workspace}"
NUM_MACHINES="${NUM_MACHINES:-1}"
MACHINE_RANK="${MACHINE_RANK:-0}"
MAIN_PROCESS_IP="${MAIN_PROCESS_IP:-127.0.0.1}"
MAIN_PROCESS_PORT="${MAIN_PROCESS_PORT:-29500}"

GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
if [ -z "${NUM_PROCESSES:-}" ]; then
  if [ "$GPUS" -gt 0 ]; then NUM_PROCESSES=$((GPUS * NUM_MACHINES)); else NUM_PROCESSES=1; fi
fi

if [ "$GPUS" -gt 0 ]; then
  ARGS=(--num_processes "$NUM_PROCESSES" --num_machines "$NUM_MACHINES" --machine_rank "$MACHINE_RANK"
        --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$MAIN_PROCESS_PORT" --dynamo_backend no
        --mixed_precision no)  # precision comes from training.mixed_precision (auto: bf16 on CUDA)
  [ "$NUM_PROCESSES" -gt 1 ] && ARGS+=(--multi_gpu)
  echo "[train.sh] accelerate launch ${ARGS[*]} train.py --config-name $CONFIG_NAME $*"
  exec "$PYTHON" -m accelerate.commands.launch "${ARGS[@]}" train.py --config-name "$CONFIG_NAME" "$@"
elif [ "$NUM_PROCESSES" -gt 1 ]; then
  # Several CPU processes: torchrun starts them; accelerate then runs DDP over the gloo backend.
  PER_NODE=$((NUM_PROCESSES / NUM_MACHINES))
  ARGS=(--nproc_per_node "$PER_NODE" --nnodes "$NUM_MACHINES" --node_rank "$MACHINE_RANK"
        --master_addr "$MAIN_PROCESS_IP" --master_port "$MAIN_PROCESS_PORT")
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  echo "[train.sh] torchrun ${ARGS[*]} train.py --config-name $CONFIG_NAME $* (CPU, gloo)"
  exec "$PYTHON" -m torch.distributed.run "${ARGS[@]}" train.py --config-name "$CONFIG_NAME" "$@"
else
  echo "[train.sh] python train.py --config-name $CONFIG_NAME $* (one CPU process)"
  exec "$PYTHON" train.py --config-name "$CONFIG_NAME" "$@"
fi
