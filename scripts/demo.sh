#!/usr/bin/env bash
# `make demo`: the whole hierarchy on the simulated robot, on a fresh CPU machine.
#   1. starts the offline planner server (OpenAI chat API, classical vision) on 127.0.0.1,
#   2. runs inference.sh in planner mode with the prompt "clear the table" on a seeded cluttered
#      scene (GrabCut segmenter + optical-flow tracker: no weights needed),
#   3. stops the server and prints the summary (objects grasped / attempts, per-attempt outcome)
#      and where the logs, images and videos (deployment/: HDF5 + MP4 per attempt) are.
# The low-level controller is the shipped checkpoint when assets/controller_small_sim exists;
# otherwise the simulator's scripted expert stands in for it (controller.type=expert) and the demo
# says so. DEMO_CONTROLLER=policy|expert forces one (DEMO_CHECKPOINT=DIR picks another checkpoint).
# Extra arguments are passed to inference.sh (e.g. sim.seed=3 sim.n_objects=[2,2]). The scene, the
# planner and the controller's diffusion noise are all seeded, so a run repeats exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export MUJOCO_GL="${MUJOCO_GL:-egl}"
PORT="${DEMO_PLANNER_PORT:-$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
LOG_ROOT="${DEMO_LOG_ROOT:-logs/demo}"
mkdir -p "$LOG_ROOT"

CKPT="${DEMO_CHECKPOINT:-assets/controller_small_sim}"
MODE="${DEMO_CONTROLLER:-auto}"   # auto | policy | expert
if [ "$MODE" = auto ]; then
  if [ -f "$CKPT/model.safetensors" ]; then MODE=policy; else MODE=expert; fi
fi
case "$MODE" in
  policy)
    if [ ! -f "$CKPT/model.safetensors" ]; then echo "[demo] error: no checkpoint in $CKPT" >&2; exit 2; fi
    # a seeded diffusion noise: the same scene and seed give the same run (override controller.seed=...)
    CONTROLLER=(controller.type=policy "controller.checkpoint=$CKPT" controller.seed=0)
    echo "[demo] controller: diffusion controller from $CKPT" ;;
  expert)
    CONTROLLER=(controller.type=expert)
    echo "[demo] controller: the simulator's scripted expert stands in for the diffusion controller" ;;
  *) echo "[demo] error: DEMO_CONTROLLER must be auto, policy or expert (got '$MODE')" >&2; exit 2 ;;
esac

echo "[demo] starting the offline planner server on 127.0.0.1:$PORT"
$PY -m planner.server --host 127.0.0.1 --port "$PORT" --log-dir "$LOG_ROOT/planner_server" --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if $PY - "$PORT" <<'PYEOF' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=1)
PYEOF
  sleep 0.5
done

set +e
./inference.sh --prompt "clear the table" --non-interactive --save-deployment-data "planner.base_url=http://127.0.0.1:$PORT/v1" \
  "logging.root=$LOG_ROOT" "${CONTROLLER[@]}" sim.seed=1 "sim.n_objects=[3,3]" "$@"
RC=$?
set -e
echo "[demo] inference exit code $RC; logs under $LOG_ROOT/ (run.log, images/, planner/, summary.json, deployment/*.mp4)"
exit $RC
