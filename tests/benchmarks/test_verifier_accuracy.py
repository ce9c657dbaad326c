"""``benchmarks/verifier_accuracy.py`` on run directories laid out as the runtime writes them,
built from real simulator grasps (the scripted expert lifts the target, then it is put down 15 cm
away): the shipped verifier must be right on all of them, and the run's own logged verdicts are
read back and scored against the simulator truth."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import pytest

from tests.held_scenes import held_then_put_down

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("verifier_accuracy", REPO / "benchmarks" / "verifier_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["verifier_accuracy"] = module          # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("verifier_accuracy", None)


def _write_run(run: Path, scene, logged: tuple[bool, bool]) -> None:
    """A runtime run directory of two attempts: 0 verified while held, 1 after putting it down."""
    (run / "images").mkdir(parents=True)
    log, outcomes = [], []
    for i, (views, lift) in enumerate([(scene.held, scene.held_lift), (scene.down, scene.down_lift)]):
        for n, cam in enumerate(("wrist", "head")):
            name = f"{10 * i + n:03d}_attempt{i:02d}_verify0_{cam}.png"
            cv2.imwrite(str(run / "images" / name), views[f"{cam}_bgr"])
            log.append(f"2026-12-08 00:00:0{i}.000 INFO    saved image {name}")
        log.append(f"2026-12-08 00:00:0{i}.500 INFO    grasp verification: success={logged[i]} (logged)")
        outcomes.append({"index": i, "instruction": f"Grasp the {scene.colour} {scene.shape}.",
                         "box": [float(v) for v in scene.box], "success": logged[i],
                         "sim_truth": {"target": 0, "end_lift": [lift]}})
    # an attempt that ended before any verification is skipped
    outcomes.append({"index": 2, "instruction": "x", "box": [0, 0, 1, 1], "sim_truth": {"target": 0, "end_lift": [0.0]}})
    (run / "summary.json").write_text(json.dumps({"outcomes": outcomes}))
    (run / "run.log").write_text("\n".join(log) + "\n")


def test_scores_real_grasps_and_the_logged_verdicts(tmp_path, tool):
    from sim import GraspEnv, SimConfig

    runs = tmp_path / "bench" / "hierarchy_retry_logs"
    with GraspEnv(SimConfig(n_objects=(4, 6), render_observations=False)) as env:
        made = 0
        for seed in (601, 602, 603):
            scene = held_then_put_down(env, "train", seed)
            if scene is None or made == 2:
                continue
            # the first run's log says the put-down object was held: a false accept "as logged"
            _write_run(runs / f"run_{seed}", scene, (True, made == 0))
            made += 1
    assert made == 2, "the expert should lift the target in two of the three scenes"
    out = tmp_path / "out"
    assert tool.main([str(tmp_path / "bench"), "--out", str(out), "--list-errors"]) == 0
    result = json.loads((out / "verifier_accuracy.json").read_text())
    rows = result["rows"]
    assert result["attempts"] == 4
    assert rows["shipped"] == {"n": 4, "right": 4, "accuracy": 1.0, "false_refusals": 0, "false_accepts": 0,
                               "held_accepted": 2, "empty_refused": 2}, result["errors"]
    assert rows["as logged"]["right"] == 3 and rows["as logged"]["false_accepts"] == 1
    assert rows["blob only"]["n"] == 4
    assert "| shipped | 4/4 | 100.0 % | 0 | 0 |" in (out / "verifier_accuracy.md").read_text()


def test_logged_verdicts_take_the_first_verification_of_each_attempt(tmp_path, tool):
    log = tmp_path / "run.log"
    log.write_text("\n".join([
        "x INFO    saved image 004_attempt00_verify0_wrist.png",
        "x INFO    grasp verification: success=False (no)",
        "x INFO    saved image 006_attempt00_verify1_wrist.png",
        "x INFO    grasp verification: success=True (yes)",
        "x INFO    saved image 012_attempt03_verify0_wrist.png",
        "x INFO    grasp verification: success=True (yes)",
        "x INFO    grasp verification: success=False (no image before it: ignored)",
    ]))
    assert tool.logged_verdicts(log) == {0: False, 3: True}


def test_bad_input_is_named(tmp_path, tool):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"run/summary.json: not a readable runtime summary"):
        list(tool.attempts_in(run))
    with pytest.raises(FileNotFoundError, match="nowhere: no such directory"):
        tool.find_runs([tmp_path / "nowhere"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tool.main([str(empty)]) == 1
