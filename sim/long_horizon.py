"""Long-horizon episodes ("clear the table", issue 24 point 4) through the real runtime, and failure
causes from the simulator's ground truth.

An episode is one ``inference.py`` run (:func:`inference_utils.runtime.session.run_session`) in
planner mode on a simulated scene: completion check -> propose -> box -> mask -> controller ->
verification -> scripted transport to the drop zone (``robot.poses.placement``, behind the robot
and off the table) and release -> completion check ..., with the runtime's failure recovery, until
the planner reports the prompt complete or ``loop.max_attempts`` attempts were made.

Ground-truth definitions (heights relative to each object's resting height, positions in metres):

* an object is **lifted** in an attempt when it rose >= ``LIFT_M`` (5 cm) at any executed chunk;
* **cleared**: at the end of the episode the object is below the table top (z < ``OFF_TABLE_Z``)
  *and* it was lifted in an attempt the planner verified (it was carried to the drop zone);
  objects asked = every object for "clear the table"; for a prompt naming colours or shapes
  ("put all the red things away") the objects whose ground-truth label matches them
  (:func:`asked_objects`, the planner server's own word lists);
* **full-prompt success**: every asked object cleared.

An attempt **succeeds** when the planner verified it, its target rose >= 5 cm and the prompt asked
for that target (a planner verification of a target that never rose counts as a failure). Cause of
a failed attempt (first rule that applies):

1. ``wrong_object`` -- another object was lifted >= 5 cm, the attempt's target was not; or the
   attempt lifted and verified an object the prompt did not ask for ("grasp the red box" and the
   planner chose the red ball);
2. ``dropped`` -- the target was lifted >= 5 cm but was < 5 cm up when the attempt ended;
3. ``rolled_away`` -- the target was never lifted 5 cm and moved >= ``ROLL_M`` (5 cm)
   horizontally during the attempt, or left the table;
4. ``missed`` -- the hand closed (recovery state ``grasp`` reached, or a detector fired) but none
   of the above: the fingers closed beside or above the target;
5. ``refused`` -- the target was lifted >= 5 cm and still was when the attempt ended, but the
   planner did not verify the grasp (a false refusal of the verifier);
6. ``timeout`` -- anything else: the hand never closed before the time/chunk limit, no mask, a
   planner error.

Cause of a failed episode (episodes that are not full-prompt successes, so the causes sum to the
failures): ``wrong_object`` if an object outside the asked set was cleared; else the cause of the
last failed attempt; else ``dropped`` if a verified object is not cleared (it fell back on the
table during the transport); else ``timeout`` (attempts ran out).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

LIFT_M = 0.05
ROLL_M = 0.05
OFF_TABLE_Z = -0.01
CAUSES = ("rolled_away", "wrong_object", "missed", "dropped", "refused", "timeout")


def attempt_cause(outcome: dict) -> Optional[str]:
    """Cause (:data:`CAUSES`) of a failed attempt from its ``summary.json`` entry; None if it
    succeeded: verified by the planner *and* its target lifted >= 5 cm (a verification of a
    target that never rose is a failure, classified like any other)."""
    truth = outcome.get("sim_truth")
    if not truth or truth.get("target") is None:
        return None if outcome.get("success") else "timeout"
    t = int(truth["target"])
    max_lift = np.asarray(truth["max_lift"], dtype=float)
    if outcome.get("success") and max_lift[t] >= LIFT_M:
        return None
    others = [i for i in range(len(max_lift)) if i != t and max_lift[i] >= LIFT_M]
    if others and max_lift[t] < LIFT_M:
        return "wrong_object"
    if max_lift[t] >= LIFT_M:
        return "dropped" if truth["end_lift"][t] < LIFT_M else "refused"
    start, end = np.asarray(truth["start_pos"][t]), np.asarray(truth["end_pos"][t])
    if np.linalg.norm(end[:2] - start[:2]) >= ROLL_M or end[2] < OFF_TABLE_Z:
        return "rolled_away"
    closed = outcome.get("failure_cause") or any(r.get("to") == "grasp" for r in outcome.get("recovery", []))
    return "missed" if closed else "timeout"


def episode_summary(summary: dict, asked: Optional[Sequence[int]] = None) -> dict:
    """Objects asked / cleared, full-prompt success, attempts, per-attempt causes and the episode's
    cause from a run's ``summary.json`` (see the module docstring)."""
    outcomes = summary.get("outcomes") or []
    final = summary.get("sim_final") or summary.get("sim_initial") or {"pos": []}
    n = len(final["pos"])
    asked = list(range(n)) if asked is None else list(asked)
    carried = set()
    for o in outcomes:
        truth = o.get("sim_truth") or {}
        if o.get("success") and truth.get("target") is not None:  # verified: carried to the drop zone
            carried.update(i for i, v in enumerate(truth["max_lift"]) if v >= LIFT_M)
    off = {i for i, p in enumerate(final["pos"]) if p[2] < OFF_TABLE_Z}
    cleared = sorted(off & carried)
    causes = [attempt_cause(o) for o in outcomes]
    for i, o in enumerate(outcomes):  # verified and lifted, but an object the prompt did not ask for
        if causes[i] is None and (o.get("sim_truth") or {}).get("target") not in (None, *asked):
            causes[i] = "wrong_object"
    full = bool(asked) and set(asked) <= set(cleared)
    # 1-based index of the first attempt that lifted an asked object and was verified (success@k)
    first = next((i + 1 for i, (o, c) in enumerate(zip(outcomes, causes)) if o.get("success") and c is None), None)
    cause = None
    if not full:
        failed = [c for c in causes if c is not None]
        if set(cleared) - set(asked):
            cause = "wrong_object"
        elif failed:
            cause = failed[-1]
        elif carried - off:
            cause = "dropped"
        else:
            cause = "timeout"
    return {"objects": n, "asked": len(asked), "cleared": len([i for i in cleared if i in asked]),
            "full_success": full, "attempts": len(outcomes), "first_success": first,
            "verified": sum(bool(o.get("success")) for o in outcomes),
            "successes": sum(bool(o.get("success")) and c is None for o, c in zip(outcomes, causes)),
            "attempt_causes": [c for c in causes if c is not None], "cause": cause,
            "status": summary.get("status"), "sim_seconds": round(sum(o.get("duration_s", 0.0) for o in outcomes), 1)}


def asked_objects(prompt: str, labels: Optional[Sequence[str]]) -> Optional[list[int]]:
    """Indices of the objects ``prompt`` asks for, from the scene's ground-truth labels ("red box");
    None (= every object) when the prompt names no colour or shape, or the labels are unknown."""
    from planner.server.vocab import parse_text  # noqa: PLC0415

    want = parse_text(prompt)
    if labels is None or not (want.colours or want.shapes):
        return None
    out = []
    for i, label in enumerate(labels):
        have = parse_text(label)
        if want.colours and not set(want.colours) & set(have.colours):
            continue
        if want.shapes and not set(want.shapes) & set(have.shapes):
            continue
        out.append(i)
    return out


def target_phrase(objects: Sequence[dict], target: int) -> str:
    """How a person names ``objects[target]`` (``info["objects"]`` of the environment) so that a
    viewer can tell it apart: ``"the red box"`` when no other object looks alike, otherwise with its
    rank among the look-alikes from left to right on the head image (``"the leftmost orange
    cylinder"``, ``"the second orange cylinder from the left"``). The simulator makes colour + shape
    unique, but capsules, cylinders and ellipsoids look alike: look-alikes share the colour and the
    shape family of the planner's vocabulary (``planner.server.vocab.SHAPE_WORDS``)."""
    from planner.server.vocab import ORDINAL_NAMES, SHAPE_OF_WORD  # noqa: PLC0415

    def kind(o: dict) -> tuple[str, str]:  # (colour, shape family): "orange capsule" ~ "orange cylinder"
        colour, *shape = o["label"].split()
        return colour, SHAPE_OF_WORD.get(shape[-1] if shape else "", " ".join(shape))

    label = objects[target]["label"]
    same = sorted((i for i, o in enumerate(objects) if kind(o) == kind(objects[target]) and o.get("bbox_head")),
                  key=lambda i: (objects[i]["bbox_head"][0] + objects[i]["bbox_head"][2]) / 2)
    if len(same) <= 1 or target not in same:
        return f"the {label}"
    rank = same.index(target)
    if rank == 0:
        return f"the leftmost {label}"
    if rank == len(same) - 1:
        return f"the rightmost {label}"
    return f"the {ORDINAL_NAMES.get(rank + 1, str(rank + 1) + 'th')} {label} from the left"


def designated_prompt(cfg: Any) -> str:
    """``"grasp <target_phrase>"`` naming the designated target of the scene the runtime's ``sim``
    section will build (a small off-screen reset of the same scene gives the head-image boxes)."""
    from inference_utils.runtime.environment import sim_config_from  # noqa: PLC0415
    from sim import GraspEnv  # noqa: PLC0415

    config = sim_config_from(cfg.sim, float(cfg.loop.control_hz))
    with GraspEnv(config) as env:
        _, info = env.reset(seed=int(cfg.sim.seed), split=config.split)
        return f"grasp {target_phrase(info['objects'], int(env.scene.target))}"


def run_episode(checkpoint: Optional[str], planner_url: str, seed: int, split: str, out_dir: str | Path,
                n_objects: tuple[int, int] = (4, 8), prompt: Optional[str] = "clear the table",
                max_attempts: int = 12, time_limit_s: float = 15.0, extra: Sequence[str] = ()) -> dict:
    """One episode through the runtime; returns :func:`episode_summary` plus the seed and prompt.
    ``prompt=None`` asks for the scene's designated target (:func:`designated_prompt`, single-object
    prompts). ``checkpoint=None`` runs the scripted expert as the controller (tests)."""
    from inference_utils.runtime.config import compose_config  # noqa: PLC0415
    from inference_utils.runtime.session import run_session  # noqa: PLC0415

    controller = ([f"controller.checkpoint={checkpoint}", "controller.type=policy", f"controller.seed={seed}"]
                  if checkpoint else ["controller.type=expert"])
    overrides = ["non_interactive=true", f"prompt={prompt or 'grasp the target'!r}", "robot=sim", "planner=offline",
                 f"planner.base_url={planner_url}", f"logging.root={out_dir}", f"exp_name={split}_{seed}",
                 f"sim.seed={seed}", f"sim.split={split}", f"sim.n_objects=[{n_objects[0]},{n_objects[1]}]",
                 f"loop.max_attempts={max_attempts}", f"robot.attempt_time_limit_s={time_limit_s}",
                 *controller, *extra]
    cfg = compose_config(overrides)
    if prompt is None:
        prompt = cfg.prompt = designated_prompt(cfg)
    code, summary = run_session(cfg, console=False)
    record = episode_summary(summary, asked_objects(prompt, (summary.get("sim_initial") or {}).get("labels")))
    record.update(seed=seed, prompt=prompt, exit_code=code, log_dir=summary.get("log_dir"), error=summary.get("error"))
    return record


def column_stats(records: list[dict]) -> dict:
    """The ``clear_table`` column of one split: objects cleared / asked, full-prompt success rate
    (Wilson 95 %), attempts per successful attempt (verified and lifted) and the failure causes
    counted per episode (``causes``, sum = failed episodes) and per attempt (``attempt_causes``)."""
    from sim.evaluate import wilson_interval  # noqa: PLC0415

    n = len(records)
    k = sum(r["full_success"] for r in records)
    asked, cleared = sum(r["asked"] for r in records), sum(r["cleared"] for r in records)
    verified = sum(r["successes"] for r in records)  # ground truth: verified and the target lifted
    return {"n": n, "successes": k, "rate": k / n if n else 0.0, "wilson95": list(wilson_interval(k, n)),
            "objects_asked": asked, "objects_cleared": cleared, "cleared_rate": cleared / asked if asked else 0.0,
            "attempts_per_success": (sum(r["attempts"] for r in records) / verified) if verified else None,
            "causes": {c: sum(r["cause"] == c for r in records) for c in CAUSES},
            "attempt_causes": {c: sum(r["attempt_causes"].count(c) for r in records) for c in CAUSES},
            "records": records}


def single_prompt_stats(records: list[dict], attempts: int) -> dict:
    """The ``hierarchy_retry`` column of one split (single-object prompts through the runtime, at
    most ``attempts`` attempts each): success@k for k = 1..attempts (the first verified attempt that
    lifted the asked object came at or before attempt k; Wilson 95 %), the rate and interval of
    success@attempts, attempts per success, and the cause of each failed episode (its last failed
    attempt) and of every failed attempt."""
    from sim.evaluate import wilson_interval  # noqa: PLC0415

    n = len(records)
    at = {}
    for k in range(1, attempts + 1):
        hits = sum(r["first_success"] is not None and r["first_success"] <= k for r in records)
        at[str(k)] = {"successes": hits, "rate": hits / n if n else 0.0, "wilson95": list(wilson_interval(hits, n))}
    k = at[str(attempts)]["successes"]
    failed = [r for r in records if r["first_success"] is None]
    return {"n": n, "successes": k, "rate": k / n if n else 0.0, "wilson95": at[str(attempts)]["wilson95"],
            "attempts": attempts, "success_at": at,
            "attempts_per_success": (sum(r["attempts"] for r in records) / k) if k else None,
            "causes": {c: sum((r["attempt_causes"] or ["timeout"])[-1] == c for r in failed) for c in CAUSES},
            "attempt_causes": {c: sum(r["attempt_causes"].count(c) for r in records) for c in CAUSES},
            "records": records}
