"""Fixtures: real uvicorn servers on free loopback ports (offline planner and a misbehaving one)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from planner import DexGraspVLAPlanner
from planner.server import create_app
from planner.server.background import serve_in_thread
from planner.synthetic import make_scene


serve = serve_in_thread


@pytest.fixture(scope="session")
def server_log_dir(tmp_path_factory) -> Any:
    """Directory receiving the offline server's request log."""
    return tmp_path_factory.mktemp("offline_server_logs")


@pytest.fixture(scope="session")
def offline_url(server_log_dir) -> Iterator[str]:
    """Base URL (with /v1) of a real offline planner server."""
    with serve(create_app(log_dir=server_log_dir)) as url:
        yield url + "/v1"


class Misbehaviour:
    """Controls the misbehaving server: ``mode`` and how many failures before a good reply."""

    GOOD = {
        "understand_prompt": {"targets": ["red cube"], "all_objects": False},
        "propose_instruction": {"instruction": "Grasp the red cube on the right side of the table."},
        "predict_bbox": {"bbox_2d": [10, 20, 110, 120], "label": "red cube", "description": "a red cube"},
        "verify_grasp": {"reasoning": "held", "success": True},
        "check_completion": {"reasoning": "nothing left", "done": True, "remaining": []},
    }

    def __init__(self) -> None:
        self.mode = "ok"
        self.failures = 0
        self.sleep_s = 0.0
        self.calls = 0
        self.auth: list[str] = []
        self.custom: str = ""

    def reply(self, task: str) -> tuple[int, Any]:
        self.calls += 1
        good = json.dumps(self.GOOD[task])
        if self.mode == "http500" and self.calls <= self.failures:
            return 500, {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
        if self.mode == "not_json":
            return 200, "I think the object is somewhere on the right."
        if self.mode == "missing_keys":
            return 200, json.dumps({"label": "red cube", "comment": "no box here"})
        if self.mode == "out_of_image":
            return 200, json.dumps({"bbox_2d": [900, 700, 1200, 900], "label": "x", "description": "x"})
        if self.mode == "zero_area":
            return 200, json.dumps({"bbox_2d": [100, 100, 100, 180], "label": "x", "description": "x"})
        if self.mode == "no_verdict":
            return 200, "The hand seems to hold something, it is true that the table is visible."
        if self.mode == "custom":
            return 200, self.custom
        return 200, good


@pytest.fixture
def misbehaving() -> Iterator[tuple[str, Misbehaviour]]:
    """A server that answers in controlled wrong ways; yields (base URL with /v1, controller)."""
    state = Misbehaviour()
    app = FastAPI()

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        state.auth.append(request.headers.get("authorization", ""))
        return {"object": "list", "data": [{"id": "bad-model", "object": "model", "created": 0, "owned_by": "t"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        state.auth.append(request.headers.get("authorization", ""))
        body = await request.json()
        text = "\n".join(p.get("text", "") for m in body["messages"] for p in
                         (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}]))
        task = text.split("Task: ", 1)[1].split("\n", 1)[0].strip()
        if state.mode == "sleep":
            state.calls += 1
            await asyncio.sleep(state.sleep_s)
        status, content = state.reply(task)
        if status != 200:
            return JSONResponse(content, status_code=status)
        if state.mode == "not_openai":
            return PlainTextResponse("<html>oops</html>")
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "bad-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    with serve(app) as url:
        yield url + "/v1", state


@pytest.fixture
def make_planner() -> Iterator[Callable[..., DexGraspVLAPlanner]]:
    """Factory for planners with test-friendly (small) timeouts and backoff; closes them afterwards."""
    made: list[DexGraspVLAPlanner] = []

    def factory(base_url: str, **kwargs: Any) -> DexGraspVLAPlanner:
        kwargs.setdefault("timeout", 10.0)
        kwargs.setdefault("backoff_s", 0.01)
        kwargs.setdefault("max_backoff_s", 0.05)
        planner = DexGraspVLAPlanner(base_url, **kwargs)
        made.append(planner)
        return planner

    yield factory
    for planner in made:
        planner.close()


@pytest.fixture(scope="session")
def scene():
    """A synthetic table-top scene with ground truth (seed 3)."""
    return make_scene(3, n_objects=5)
