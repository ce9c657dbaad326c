"""Live view (``--viz rerun``): the runtime and the sim evaluator stream cameras, mask, box, state,
the predicted chunk and planner messages to an ``.rrd`` file that reads back with the SDK."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference_utils.runtime.viz_rerun import DEFAULT_RRD_NAME, NullViz, make_viz, mask_box, resolve_sink

rr = pytest.importorskip("rerun", reason="rerun-sdk is not installed (pip install -e '.[viz]')")

RED_SPHERE_BOX = "150,125,185,160"  # seed 1, 240x320 (see test_manual_and_faults.py)
STEP_ENTITIES = {"/camera/head", "/camera/wrist", "/camera/head/mask", "/camera/head/box", "/state", "/chunk"}


def rrd_entities(path: Path) -> set[str] | None:
    """Entity paths in an .rrd file, or None when this SDK version cannot read files back."""
    chunk_mod = getattr(rr, "chunk", None)
    if chunk_mod is None or not hasattr(chunk_mod, "RrdReader"):
        return None
    summary = chunk_mod.RrdReader(str(path)).stream().collect().summary()
    return {line.split()[0] for line in summary.splitlines() if line.strip().startswith("/")}


def test_resolve_sink_and_null_default(tmp_path):
    assert resolve_sink(connect="gpu:9876") == ("connect", "rerun+http://gpu:9876/proxy")
    assert resolve_sink(save="a.rrd", connect=None) == ("save", "a.rrd")
    assert resolve_sink(default_dir=tmp_path, display=False) == ("save", str(tmp_path / DEFAULT_RRD_NAME))
    assert resolve_sink(default_dir=tmp_path, display=True) == ("spawn", None)
    assert isinstance(make_viz(None), NullViz) and isinstance(make_viz("none"), NullViz)
    with pytest.raises(ValueError):
        make_viz("matplotlib")
    assert mask_box(np.zeros((4, 4), bool)) is None
    m = np.zeros((10, 20), bool)
    m[2:5, 3:9] = True
    assert mask_box(m) == [3.0, 2.0, 9.0, 5.0]


def test_rerun_viz_saves_synthetic_steps(tmp_path):
    path = tmp_path / "sub" / "synthetic.rrd"
    viz = make_viz("rerun", save=str(path))
    assert viz.mode == "save" and viz.target == str(path)
    rng = np.random.default_rng(0)
    for step in range(4):
        head = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        wrist = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        mask = np.zeros((48, 64), bool)
        mask[10:20, 15:30] = True
        viz.log_step(step, head, wrist, mask, mask_box(mask), rng.normal(size=13),
                     rng.normal(size=(64, 13)) if step % 2 == 0 else None)
    viz.log_planner("predict_bbox", "box [15, 10, 30, 20] label='red sphere'")
    viz.close()
    viz.close()  # idempotent
    assert path.exists() and path.stat().st_size > 1000
    entities = rrd_entities(path)
    if entities is not None:
        assert STEP_ENTITIES | {"/planner"} <= entities, entities


def test_inference_manual_run_with_viz_save(run_inference, tmp_path):
    rrd = tmp_path / "tmp.rrd"
    res = run_inference("--manual", "--bbox", RED_SPHERE_BOX, "controller.type=expert",
                        "loop.max_chunks_per_attempt=2", "--viz", "rerun", "--viz-save", str(rrd))
    assert res.code == 0, res.log_text
    assert "live view: rerun, save" in res.log_text
    assert rrd.exists() and rrd.stat().st_size > 1000
    entities = rrd_entities(rrd)
    if entities is not None:
        assert STEP_ENTITIES <= entities, entities


def test_inference_viz_defaults_to_run_dir_without_display(run_inference, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    res = run_inference("--manual", "--bbox", RED_SPHERE_BOX, "controller.type=expert",
                        "loop.max_chunks_per_attempt=1", "--viz", "rerun")
    assert res.code == 0, res.log_text
    rrd = res.dir / DEFAULT_RRD_NAME
    assert rrd.exists() and rrd.stat().st_size > 1000


def test_inference_without_flag_writes_no_rrd(run_inference):
    res = run_inference("--manual", "--bbox", RED_SPHERE_BOX, "controller.type=expert",
                        "loop.max_chunks_per_attempt=1")
    assert res.code == 0, res.log_text
    assert not list(res.dir.rglob("*.rrd")) and "live view" not in res.log_text


def test_sim_evaluator_streams_episode(tmp_path):
    from sim.config import SimConfig
    from sim.evaluate import run_evaluation

    class HoldStill:
        def predict_chunk(self, obs):
            return np.tile(np.asarray(obs["right_state"], np.float64), (64, 1))

    rrd = tmp_path / "eval.rrd"
    viz = make_viz("rerun", save=str(rrd), app_id="dexgraspvla_sim_eval")
    config = SimConfig(n_objects=(2, 2), time_limit_s=0.5, image_height=120, image_width=160)
    try:
        summary = run_evaluation(HoldStill(), "train", episodes=1, seed=3000, config=config, progress=False, viz=viz)
    finally:
        viz.close()
    assert summary["records"][0]["steps"] > 0
    assert rrd.exists() and rrd.stat().st_size > 1000
    entities = rrd_entities(rrd)
    if entities is not None:
        assert STEP_ENTITIES | {"/planner"} <= entities, entities


def test_planner_run_logs_planner_messages(run_inference, planner_url, tmp_path):
    rrd = tmp_path / "planner.rrd"
    res = run_inference("--prompt", "clear the table", "controller.type=expert", "loop.max_attempts=1",
                        "loop.max_chunks_per_attempt=2", f"planner.base_url={planner_url}", "--viz-save", str(rrd))
    assert res.code == 0, res.log_text
    assert rrd.exists() and rrd.stat().st_size > 1000
    entities = rrd_entities(rrd)
    if entities is not None:
        assert STEP_ENTITIES | {"/planner"} <= entities, entities


def test_a_viewer_failure_never_stops_the_run(tmp_path, caplog):
    """An error inside rerun is logged once and ends the streaming, not the robot's run."""
    from inference_utils.runtime.viz_rerun import RerunViz

    viz = RerunViz(mode="save", target=str(tmp_path / "x.rrd"))
    viz.log_step(0, state=np.zeros(13))
    viz.log_step(1, box=[1, 2])  # a malformed box makes logging fail
    assert viz.enabled is False
    viz.log_step(2, state=np.zeros(13))  # ignored, no exception
    viz.log_planner("predict_bbox", "ok")
    viz.close()
    assert any("live view" in r.message for r in caplog.records)
