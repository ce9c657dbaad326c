#!/usr/bin/env bash
# Idempotent set-up: Debian packages for offscreen MuJoCo rendering, a virtualenv in .venv,
# and the project installed (editable) with the requested extras. Quick when already done:
# a stamp file records the hash of the dependency files, and pip runs only when it changes.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-test}"
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

# 1. Debian packages: software EGL/OSMesa rendering for MuJoCo offscreen, libusb for pyrealsense2.
DEB_PKGS="libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0 libosmesa6 libusb-1.0-0"
missing=""
for p in $DEB_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[bootstrap] installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# 2. Virtualenv.
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel >/dev/null 2>&1 || true
fi

# 3. Project + extras, only when the dependency files changed.
STAMP="$VENV/.dexgraspvla-$(echo "$EXTRAS" | tr ',' '_').stamp"
HASH="$(cat pyproject.toml requirements.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[bootstrap] installing the project with extras [$EXTRAS] (first time takes a few minutes)"
  # PyPI's torch for x86_64 is a CUDA build: the venv needs ~7 GB. Say so before pip fails halfway.
  NEED_GB="${DEXGRASPVLA_MIN_FREE_GB:-8}"
  FREE_GB="$(df -Pk "$VENV" | awk 'NR==2 {print int($4 / 1048576)}')"
  if [ ! -f "$STAMP" ] && [ "${FREE_GB:-0}" -lt "$NEED_GB" ]; then
    echo "[bootstrap] only ${FREE_GB} GB free on the file system of $VENV; the first install needs about" \
         "${NEED_GB} GB (torch with its CUDA libraries). Free some space (or set DEXGRASPVLA_MIN_FREE_GB)." >&2
    exit 1
  fi
  LOG="$VENV/pip-install.log"
  if ! "$VENV/bin/python" -m pip install --progress-bar off -e ".[$EXTRAS]" >"$LOG" 2>&1; then
    tail -40 "$LOG"; echo "[bootstrap] pip install failed; full log: $LOG" >&2; exit 1
  fi
  # SAM 2 is a source package that needs torch to build: pip's isolated build would fetch the newest
  # torch (GBs of CUDA wheels) and, with nvcc present, compile a CUDA extension against it. Build it
  # against the venv's own torch, without the extension (docs/perception.md).
  if [ "$EXTRAS" = "test" ] || [[ ",$EXTRAS," == *",sam2,"* ]]; then
    if ! SAM2_BUILD_CUDA=0 "$VENV/bin/python" -m pip install --progress-bar off --no-build-isolation \
        "sam2==1.1.0" >>"$LOG" 2>&1; then
      tail -20 "$LOG"; echo "[bootstrap] installing sam2 failed; full log: $LOG" >&2; exit 1
    fi
  fi
  echo "$HASH" > "$STAMP"
fi
