"""benchmarks/policy_server.py: ``--help`` imports nothing heavy, and one small run prints every
figure and finds the remote chunk equal to the in-process one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "policy_server.py"
CKPT = REPO / "assets" / "controller_small_sim"


def test_help_is_fast_and_lazy():
    code = ("import runpy, sys; sys.argv = ['policy_server.py', '--help']\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('heavy:', sorted(m for m in ('torch', 'websockets', 'msgpack') if m in sys.modules))") % str(SCRIPT)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "--server" in res.stdout and "heavy: []" in res.stdout


@pytest.mark.skipif(not (CKPT / "model.safetensors").is_file(), reason="shipped checkpoint absent")
def test_small_run_prints_the_figures(tmp_path):
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--calls", "2", "--warmup", "0", "--server", "thread",
                          "--height", "120", "--width", "160", "--num-samples", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for label in ("in-process chunk", "remote chunk (round trip)", "overhead per call", "bytes per call",
                  "equal to in-process chunks (same noise): yes"):
        assert label in res.stdout
    result = json.loads(out.read_text())
    assert result["outputs_equal"] and result["request_bytes"] > 120 * 160 * 7 and result["reply_bytes"] > 64 * 13 * 4
