"""One inference run: validate, build, connect, loop, and always stop cleanly.

Exit codes: 0 the run ended normally (prompt completed, attempt limit, manual attempts done);
1 a fault (device stopped answering, exception anywhere in the loop, or a planner run that
"completed" without a single attempt, i.e. 0/0 objects); 2 invalid configuration
(nothing connected or moved); 130 interrupted (Ctrl-C / SIGTERM).

On a fault or an interrupt the arm is held where it is, the hand keeps its last target (nothing
is opened), the cause is logged, every device is disconnected and ``summary.json`` is written.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from inference_utils.runtime.config import ConfigError, parse_bbox, validate_config

EXIT_OK, EXIT_FAULT, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def _console():
    from rich.console import Console  # noqa: PLC0415

    return Console(stderr=True)


def print_summary(summary: dict) -> None:
    """Print the run summary as a rich table."""
    from rich.table import Table  # noqa: PLC0415

    console = _console()
    if summary["status"] == "config_error":
        console.print(f"[bold red]configuration error:[/bold red] {summary['error']}", markup=True, highlight=False)
        console.print(f"log directory: {summary['log_dir']}")
        return
    table = Table(title=f"DexGraspVLA run: {summary['status']} "
                        f"({summary['objects_grasped']} grasped / {summary['attempts']} attempts)")
    for column in ("#", "target", "box", "status", "success", "verif.", "chunks", "time (s)"):
        table.add_column(column)
    for o in summary["outcomes"]:
        table.add_row(str(o["index"]), str(o["target"] or o["instruction"])[:40], str(o["box"]), o["status"],
                      "yes" if o["success"] else "no", str(o["verifications"]), str(o["chunks"]),
                      f"{o['duration_s']:.1f}")
    console.print(table)
    console.print(f"log directory: {summary['log_dir']} (run.log, images/, planner/, summary.json)")
    videos = [f for f in summary.get("deployment_files", []) if str(f).endswith(".mp4")]
    if videos:
        console.print(f"videos (wrist | head | mask): {len(videos)} MP4 under {Path(videos[0]).parent}")
    if summary.get("error"):
        console.print(f"[bold red]{summary['error']}[/bold red]", markup=True, highlight=False)


def _build(cfg: DictConfig, log: Any) -> tuple[Any, Any]:
    """Environment + Agent (validates device, simulator, perception, controller, planner)."""
    from inference_utils.devices import sim_devices  # noqa: F401,PLC0415 - registers the 'sim' devices
    from inference_utils.perception import build_segmenter, build_tracker  # noqa: PLC0415
    from inference_utils.runtime.agent import Agent, build_planner  # noqa: PLC0415
    from inference_utils.runtime.controllers import build_controller  # noqa: PLC0415
    from inference_utils.runtime.environment import Environment  # noqa: PLC0415

    plain = OmegaConf.to_container(cfg, resolve=True)
    env = Environment(plain["robot"], plain["sim"], plain["loop"]["control_hz"], log.logger)
    if (plain.get("agent") or {}).get("name") == "dexvla":  # no planner, segmenter or tracker
        from inference_utils.runtime.dexvla_agent import build_dexvla_agent  # noqa: PLC0415

        return env, _with_viz(build_dexvla_agent(plain, log), plain, log)
    segmenter = build_segmenter(plain["perception"])
    tracker = build_tracker(plain["perception"])
    with log.timed("controller.load"):
        controller = build_controller(plain["controller"], env)
    planner = build_planner(plain["planner"], log.planner_dir) if cfg.mode == "planner" else None
    agent = Agent(log, controller, segmenter, tracker, planner)
    return env, _with_viz(agent, plain, log)


def _with_viz(agent: Any, plain: dict, log: Any) -> Any:
    """Attach the live view of ``plain['viz']`` (``--viz rerun``) to ``agent``."""
    viz_cfg = plain.get("viz") or {}
    if (viz_cfg.get("backend") or "none") != "none":
        from inference_utils.runtime.viz_rerun import make_viz  # noqa: PLC0415 - rerun only with --viz

        agent.viz = make_viz(viz_cfg.get("backend"), viz_cfg.get("save"), viz_cfg.get("connect"), log.dir)
        log.logger.info("live view: rerun, %s %s", agent.viz.mode, agent.viz.target or "(viewer spawned)")
    return agent


def _manual_callbacks(cfg: DictConfig, log: Any) -> tuple[Callable, Callable]:
    from inference_utils.runtime import operator  # noqa: PLC0415

    fixed = parse_bbox(cfg.bbox)

    def get_box(head: Any) -> Optional[list[float]]:
        if fixed is not None:
            return fixed
        if not operator.has_display():
            raise ConfigError("bbox: no display for the box window; pass --bbox x1,y1,x2,y2")
        return operator.select_box(head)

    def next_attempt(index: int) -> bool:
        if cfg.non_interactive:
            return index < int(cfg.loop.manual_attempts)
        return operator.ask("Press Enter to start an attempt (q to quit): ").lower() not in ("q", "quit")

    return get_box, next_attempt


def run_session(cfg: DictConfig, events: Sequence[Callable[[str, dict], None]] = (),
                console: bool = True) -> tuple[int, dict]:
    """Run inference as configured; returns ``(exit_code, summary)``. Never raises."""
    from inference_utils.runtime.episode_log import EpisodeLog  # noqa: PLC0415

    try:
        validate_config(cfg)
    except ConfigError as exc:
        _console().print(f"[bold red]configuration error:[/bold red] {exc}", markup=True, highlight=False)
        return EXIT_CONFIG, {"status": "config_error", "error": str(exc)}
    log = EpisodeLog(cfg.logging.root, cfg.exp_name, console=console)
    logger = log.logger
    logger.info("run directory %s (mode %s, robot %s)", log.dir, cfg.mode, cfg.robot.name)
    (log.dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    summary: dict = {"status": "starting", "mode": cfg.mode, "prompt": cfg.prompt, "log_dir": str(log.dir),
                     "error": None, "outcomes": []}
    started = time.monotonic()
    env = agent = recorder = loop = None
    code = EXIT_OK
    try:
        env, agent = _build(cfg, log)
    except KeyboardInterrupt:
        summary.update(status="interrupted", error="interrupted (Ctrl-C) during set-up")
        code = EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every set-up failure is a configuration problem
        logger.error("configuration error (nothing connected or moved): %s: %s", type(exc).__name__, exc)
        summary.update(status="config_error", error=f"{type(exc).__name__}: {exc}")
        code = EXIT_CONFIG
    if code == EXIT_OK:
        from inference_utils.runtime import operator  # noqa: PLC0415
        from inference_utils.runtime.loop import GraspLoop  # noqa: PLC0415
        from inference_utils.runtime.recorder import DeploymentRecorder  # noqa: PLC0415

        recorder = DeploymentRecorder(log.deployment_dir, cfg.loop.control_hz, logger) \
            if cfg.save_deployment_data else None
        enter = operator.EnterWatcher() if cfg.mode == "manual" and not cfg.non_interactive else None
        loop_cls = GraspLoop
        if cfg.mode == "language":  # agent=dexvla
            from inference_utils.runtime.dexvla_agent import LanguageLoop  # noqa: PLC0415
            loop_cls = LanguageLoop
        loop = loop_cls(cfg, env, agent, log, recorder, enter, events)
        code = _run(cfg, env, loop, log, summary)
    _shutdown(env, agent, recorder, log, summary)
    outcomes = [dataclasses.asdict(o) for o in loop.outcomes] if loop is not None else []
    summary.update(exit_code=code, outcomes=outcomes, attempts=len(outcomes),
                   objects_grasped=sum(o["success"] for o in outcomes),
                   planner_calls=list(agent.planner_calls) if agent is not None else [],
                   objects_asked=getattr(loop, "objects_asked", None),
                   objects_remaining=getattr(loop, "objects_remaining", None),
                   sim_initial=getattr(loop, "sim_initial", None), sim_final=getattr(loop, "sim_final", None),
                   duration_s=round(time.monotonic() - started, 2))
    log.write_json("summary.json", summary)
    log.close()
    if console:
        print_summary(summary)
    return code, summary


def _run(cfg: DictConfig, env: Any, loop: Any, log: Any, summary: dict) -> int:
    """Connect and loop; on any failure hold the arm and report. Returns the exit code."""
    from inference_utils.runtime import operator  # noqa: PLC0415

    logger = log.logger
    try:
        prompt = cfg.prompt
        if cfg.mode in ("planner", "language") and not (prompt or "").strip():
            prompt = operator.ask("Please enter your instruction (e.g. 'clear the table'):\n>>> ")
            if not prompt:
                raise ConfigError("prompt: no instruction given")
            summary["prompt"] = prompt
        if not cfg.non_interactive and operator.ask("Press Enter to start (q to quit): ").lower() in ("q", "quit"):
            summary["status"] = "cancelled"
            return EXIT_OK
        with log.timed("connect"):
            env.connect()
        if cfg.robot.get("home_on_start", True):
            env.hand.open()
            env.move_to_pose("home")
        if cfg.mode == "planner":
            summary["status"] = loop.run_planner(prompt)
            if summary["status"] == "completed" and not loop.outcomes:
                # "completed 0/0": the planner saw nothing to grasp -- never a success (exit 1)
                summary.update(status="nothing_found",
                               error="the planner found no object to grasp (completed 0/0); check the head "
                                     "camera image (images/*_initial_head.png) and the prompt")
                logger.error("%s", summary["error"])
                return EXIT_FAULT
        elif cfg.mode == "language":
            summary["status"] = loop.run_language(prompt)
        else:
            summary["status"] = loop.run_manual(*_manual_callbacks(cfg, log))
        return EXIT_OK
    except KeyboardInterrupt:
        logger.error("interrupted by the operator: stopping motion")
        summary.update(status="interrupted", error="interrupted (Ctrl-C)")
        env.safe_stop()
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - any failure in the loop is a fault
        logger.exception("FAULT: %s: %s -- stopping motion, holding the arm", type(exc).__name__, exc)
        summary.update(status="fault", error=f"{type(exc).__name__}: {exc}")
        env.safe_stop()
        return EXIT_FAULT


def _shutdown(env: Any, agent: Any, recorder: Any, log: Any, summary: dict) -> None:
    """Flush the recorder, disconnect devices, close the planner and the controller (a remote
    controller's connection); failures are logged only."""
    steps = [("recorder", recorder and recorder.close), ("devices", env and env.disconnect),
             ("live view", agent and agent.viz.close),
             ("planner", agent and agent.planner and agent.planner.close),
             ("controller", agent and getattr(agent.controller, "close", None))]
    for name, step in steps:
        if not step:
            continue
        try:
            step()
        except Exception as exc:  # noqa: BLE001
            log.logger.error("closing %s failed: %s", name, exc)
            summary.setdefault("shutdown_errors", []).append(f"{name}: {exc}")
    if recorder is not None:
        summary["deployment_files"] = [str(p) for p in recorder.files]
    log.logger.info("devices disconnected; run finished with status %s", summary["status"])
