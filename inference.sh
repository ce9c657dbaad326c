#!/usr/bin/env bash
# DexGraspVLA inference (simulator by default). Examples:
#   ./inference.sh --prompt "clear the table" --non-interactive controller.type=expert
#   ./inference.sh robot=real controller.checkpoint=CKPT_DIR planner.base_url=http://HOST:8000/v1 \
#       --save-deployment-data --gen-attn-map
# The offline planner server: python -m planner.server --host 127.0.0.1 --port 8001
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
exec "$PYTHON" inference.py "$@"
