"""sim.collect stores a language instruction per episode and a reasoning string per step (issue 22)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from sim.collect import collect
    out = tmp_path_factory.mktemp("lang") / "lang.zarr"
    s = collect(str(out), episodes=1, seed=7, n_objects=(1, 2), progress=False)
    assert s["stored"] == 1
    return str(out)


def test_language_and_reasoning_are_stored(store):
    from controller.dataset.formats import open_source
    from sim.config import SimConfig
    from sim.scene import sample_scene

    src = open_source(store)
    scene = sample_scene(7, "train", SimConfig(n_objects=(1, 2)))
    label = scene.objects[scene.target].describe()           # e.g. "orange capsule"
    assert src.language(0) == f"grasp the {label}"
    steps = [src.reasoning(s) for s in range(src.n_steps)]
    assert steps[0] == f"locate the {label}"
    order = [f"locate the {label}", f"move above the {label}", f"lower the hand to the {label}", "close the hand",
             f"lift the {label}", f"hold the {label} up"]
    assert set(steps) <= set(order) and {order[1], order[2], order[3], order[4]} <= set(steps)
    ranks = [order.index(s) for s in steps]
    assert ranks == sorted(ranks)                              # phases never go back
    assert src.describe()["reasoning_vocab_size"] == len(set(steps))


def test_phases_follow_the_plan_and_actions_are_unchanged():
    """Phase bookkeeping is read-only: the recorded actions equal a plain expert run's."""
    from sim.expert import ScriptedExpert, run_expert_episode
    from tests.sim.conftest import make_env, record_expert_actions

    with make_env(n_objects=(1, 2)) as env:
        ex = ScriptedExpert()
        out = run_expert_episode(env, 7, "train", ex, record=True)
    t1, t2 = ex.descent_window
    assert [ex.phase_at(t) for t in (0, t1 - 1, t1, t2 - 1, t2, ex.total_steps - 1, ex.total_steps)] == \
        ["approach", "approach", "descend", "descend", "close", "lift", "hold"]
    assert len(out["phases"]) == len(out["frames"]["action"]) == out["steps"]
    plain, _ = record_expert_actions(7, n_objects=(1, 2))
    n = len(plain)
    np.testing.assert_array_equal(np.stack(out["frames"]["action"][:n]), np.stack(plain))
