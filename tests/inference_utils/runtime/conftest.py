"""Fixtures for the inference-loop tests: offline planner server, tiny checkpoint, a runner."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def planner_url(tmp_path_factory) -> Iterator[str]:
    """Base URL (with /v1) of the offline planner server running over HTTP in a thread."""
    from planner.server import create_app
    from planner.server.background import serve_in_thread

    with serve_in_thread(create_app(log_dir=tmp_path_factory.mktemp("planner_server"))) as url:
        yield url + "/v1"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Callable[[], str]:
    """Factory: ``tiny_checkpoint()`` -> directory of a random-weight tiny controller (built once)."""
    made: dict[str, str] = {}

    def factory() -> str:
        if "path" not in made:
            from controller.workspace.checkpoint import save_checkpoint
            from tests.controller.conftest import build_policy, fitted_normalizer

            policy, cfg = build_policy("tiny")
            policy.set_normalizer(fitted_normalizer())
            made["path"] = save_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny"), policy, cfg=cfg)
        return made["path"]

    return factory


class RunResult:
    """Outcome of one in-process ``inference.py`` run."""

    def __init__(self, code: int, root: Path, events: list) -> None:
        self.code, self.root, self.events = code, root, events
        dirs = sorted(p for p in root.iterdir() if p.is_dir())
        self.dir = dirs[-1] if dirs else None

    @property
    def summary(self) -> dict:
        return json.loads((self.dir / "summary.json").read_text())

    @property
    def log_text(self) -> str:
        return (self.dir / "run.log").read_text()

    def images(self) -> list[str]:
        return sorted(p.name for p in (self.dir / "images").iterdir())


@pytest.fixture
def run_inference(tmp_path) -> Callable[..., RunResult]:
    """Factory: ``run_inference(*args, on_event=None)`` runs ``inference.py`` in-process
    (non-interactive, small simulator scene, logs under tmp_path) and returns a RunResult."""
    from inference_utils.runtime.cli import main

    counter = iter(range(1000))

    def factory(*args: str, on_event: Callable[[str, dict], Any] | None = None) -> RunResult:
        root = tmp_path / f"logs{next(counter)}"
        events: list = []

        def sink(name: str, data: dict) -> None:
            events.append((name, data))
            if on_event is not None:
                on_event(name, data)

        base = ["--non-interactive", f"logging.root={root}", "sim.n_objects=[2,2]", "sim.seed=1",
                "sim.image_height=240", "sim.image_width=320"]
        code = main([*base, *args], events=[sink])
        root.mkdir(exist_ok=True)
        return RunResult(code, root, events)

    return factory
