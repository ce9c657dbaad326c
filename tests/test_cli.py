"""Every command-line tool agrees: ``--help`` runs, long flags are kebab-case, the old underscore
spellings still work (with a deprecation note), ``--device auto`` resolves, and the runtime never
reports a planner run that grasped 0/0 objects as a success.

The list of CLIs is ``benchmarks/cli_startup.py``'s (that benchmark times the same ``--help``
calls; no timing here)."""
from __future__ import annotations

import importlib.util
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from inference_utils import cli_common

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cli_startup", REPO / "benchmarks" / "cli_startup.py")
cli_startup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_startup)

LONG_FLAG = re.compile(r"(?<![\w-])--[A-Za-z0-9][A-Za-z0-9_-]*")
KEBAB = re.compile(r"--[a-z0-9]+(-[a-z0-9]+)*")


def _flag_text(help_text: str) -> str:
    """The parts of an argparse ``--help`` that declare flags: the usage block and the option lines
    (not the prose, which may quote another tool's flags)."""
    usage = help_text.split("\n\n", 1)[0]
    options = [line for line in help_text.splitlines() if re.match(r"\s{2,}-", line)]
    return "\n".join([usage, *(re.split(r"\s{2,}", line.strip(), maxsplit=1)[0] for line in options)])


def _run(argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=cli_startup.cli_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("name,argv", [(c[0], c[1]) for c in cli_startup.CLIS], ids=[c[0] for c in cli_startup.CLIS])
def test_help_runs_and_uses_kebab_case_flags(name, argv):
    proc = _run([*argv, "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    flags = set(LONG_FLAG.findall(_flag_text(proc.stdout)))
    assert "--help" in flags, proc.stdout
    bad = sorted(f for f in flags if not KEBAB.fullmatch(f))
    assert not bad, f"{name}: long flags not in --kebab-case: {bad}"


def test_normalize_flags_rewrites_only_known_underscore_flags():
    known = {"--out-dir", "--non-interactive", "--time-limit"}
    with pytest.warns(DeprecationWarning, match="--out-dir"):
        out = cli_common.normalize_flags(["--out_dir=x_y", "--time-limit", "3", "--foo_bar", "a_b=1",
                                          "--", "--non_interactive"], known, stream=sys.stderr)
    assert out == ["--out-dir=x_y", "--time-limit", "3", "--foo_bar", "a_b=1", "--", "--non_interactive"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # kebab-case spellings: no warning at all
        assert cli_common.normalize_flags(["--out-dir", "d"], known) == ["--out-dir", "d"]


def test_old_underscore_flag_accepted_with_deprecation_note(capsys):
    from inference_utils.runtime.cli import build_parser

    with pytest.warns(DeprecationWarning, match="--non-interactive"):
        args, rest = build_parser().parse_known_args(["--non_interactive", "--save_deployment_data", "robot=sim"])
    assert args.non_interactive and args.save_deployment_data and rest == ["robot=sim"]
    err = capsys.readouterr().err
    assert "--non_interactive is deprecated, use --non-interactive" in err
    assert "--save_deployment_data is deprecated, use --save-deployment-data" in err


def test_old_underscore_flag_in_a_subprocess():
    proc = _run(["inference.py", "--non_interactive", "--cfg"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "non_interactive: true" in proc.stdout
    assert "--non_interactive is deprecated, use --non-interactive" in proc.stderr
    # sim.evaluate: the old spelling parses (then the run stops on the missing checkpoint, exit 2)
    proc = _run(["-m", "sim.evaluate", "--time_limit", "5"])
    assert proc.returncode == 2 and "give either --checkpoint or --remote" in proc.stderr, proc.stderr[-2000:]
    assert "--time_limit is deprecated, use --time-limit" in proc.stderr


def test_device_auto_resolves_to_cpu_here():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("an accelerator is present: auto does not resolve to cpu")
    assert cli_common.resolve_device("auto") == "cpu"
    assert cli_common.resolve_device(None) == "cpu"
    assert cli_common.resolve_device("cuda:1") == "cuda:1"  # explicit devices pass through
    proc = _run(["-m", "sim.evaluate", "--help"])
    assert re.search(r"--device DEVICE\s+torch device: auto \(cuda, then mps, then cpu\)", proc.stdout), proc.stdout


def test_bench_robot_refuses_planner_mode(tmp_path, capsys):
    """robot=bench has synthetic cameras (a colour gradient): planner mode is refused before anything
    connects, with a message pointing at --manual or robot=sim."""
    from inference_utils.runtime.cli import main

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    code = main(["--non-interactive", "--prompt", "clear the table", "robot=bench", f"controller.checkpoint={ckpt}",
                 f"logging.root={tmp_path / 'logs'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--manual" in err and "robot=sim" in err and "synthetic" in err
    assert not (tmp_path / "logs").exists()  # refused before the run directory was made


def test_planner_run_that_completes_zero_of_zero_is_not_a_success(tmp_path, monkeypatch):
    """A planner that finds nothing to grasp ("completed 0/0") ends with exit code 1, never 0."""
    from inference_utils.runtime import agent, loop
    from inference_utils.runtime.session import EXIT_FAULT
    from inference_utils.runtime.cli import main

    class _NoPlanner:
        def close(self):
            pass

    monkeypatch.setattr(agent, "build_planner", lambda cfg, episode_dir: _NoPlanner())
    monkeypatch.setattr(loop.GraspLoop, "run_planner", lambda self, prompt: "completed")
    code = main(["--non-interactive", "--prompt", "clear the table", "controller.type=expert",
                 f"logging.root={tmp_path}", "sim.n_objects=[2,2]", "sim.seed=1", "sim.image_height=240",
                 "sim.image_width=320"])
    assert code == EXIT_FAULT
    summaries = list(tmp_path.rglob("summary.json"))
    assert len(summaries) == 1
    import json

    summary = json.loads(summaries[0].read_text())
    assert summary["status"] == "nothing_found" and summary["attempts"] == 0 and summary["exit_code"] == 1
    assert "0/0" in summary["error"]


def test_emulator_log_is_rate_limited(caplog):
    from inference_utils.emulator_log import RateLimitedLog

    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.emulator"), interval_s=2.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.emulator"):
        for i in range(250):  # 250 frames at 50 Hz (5 s): the first, then one summary per 2 s
            log.event("movej_canfd", "frame %d", i)
            now[0] += 0.02
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("movej_canfd: frame 0 (first")
    assert len(lines) == 3, lines
    counts = [int(re.search(r": (\d+) in the last", line).group(1)) for line in lines[1:]]
    assert all(99 <= c <= 101 for c in counts), lines
    assert "in the last" in lines[-1]


def test_eval_video_caption():
    from sim.evaluate import CAPTION_BAND_PX, caption_frame, episode_caption

    text = episode_caption("unseen_objects", 1003, "grasp the red box", True)
    assert text == "unseen_objects | seed 1003 | grasp the red box | success"
    frame = np.zeros((120, 480, 3), np.uint8)
    out = caption_frame(frame, text, True)
    assert out.shape == (120 + CAPTION_BAND_PX, 480, 3) and out[:CAPTION_BAND_PX].any() and not out[CAPTION_BAND_PX:].any()


@pytest.mark.parametrize("argv", [["inference.py"], ["-m", "sim.evaluate"]], ids=["inference.py", "sim.evaluate"])
def test_help_imports_nothing_heavy(argv):
    """``--help`` of the two main CLIs imports no torch / mujoco / hydra / omegaconf (the timing is
    benchmarks/cli_startup.py's; this checks the cause, not the clock)."""
    proc = _run(["-X", "importtime", *argv, "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    heavy = imported & {"torch", "mujoco", "hydra", "omegaconf", "cv2", "transformers"}
    assert not heavy, f"{' '.join(argv)} --help imports {sorted(heavy)}"
