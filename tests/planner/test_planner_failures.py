"""Client robustness against a misbehaving server: malformed replies, HTTP 500, timeouts, API key."""

from __future__ import annotations

import numpy as np
import pytest

from planner import PlannerError

pytestmark = pytest.mark.timeout(60)

IMG = np.full((480, 640, 3), 120, np.uint8)


@pytest.mark.parametrize("mode,call", [
    ("not_json", "predict_bbox"),
    ("missing_keys", "predict_bbox"),
    ("out_of_image", "predict_bbox"),
    ("zero_area", "predict_bbox"),
    ("no_verdict", "verify_grasp"),
    ("no_verdict", "check_completion"),
    ("missing_keys", "propose_instruction"),
    ("not_json", "understand_prompt"),
])
def test_malformed_reply_raises_planner_error(misbehaving, make_planner, mode, call):
    url, state = misbehaving
    state.mode = mode
    planner = make_planner(url, parse_retries=1)
    calls = {
        "predict_bbox": lambda: planner.predict_bbox("grasp the red cube", IMG),
        "verify_grasp": lambda: planner.verify_grasp("grasp the red cube", IMG, IMG),
        "check_completion": lambda: planner.check_completion("clear the table", IMG, IMG),
        "propose_instruction": lambda: planner.propose_instruction("clear the table", IMG, IMG),
        "understand_prompt": lambda: planner.understand_prompt("clear the table"),
    }
    with pytest.raises(PlannerError) as err:
        calls[call]()
    assert err.value.task == call and f"[{call}]" in str(err.value)
    assert err.value.reply is not None and "Reply was:" in str(err.value)
    assert state.calls == 2  # asked once more after the unusable reply


def test_http_500_retried_then_ok(misbehaving, make_planner):
    url, state = misbehaving
    state.mode, state.failures = "http500", 2
    planner = make_planner(url, max_retries=3)
    box = planner.predict_bbox("grasp the red cube", IMG)
    assert box.bbox.as_list() == [10, 20, 110, 120]
    assert state.calls == 3


def test_http_500_exhausts_retries(misbehaving, make_planner, tmp_path):
    url, state = misbehaving
    state.mode, state.failures = "http500", 100
    planner = make_planner(url, max_retries=2, episode_dir=tmp_path)
    with pytest.raises(PlannerError, match=r"\[verify_grasp\].*3 attempt"):
        planner.verify_grasp("grasp the red cube", IMG, IMG)
    assert state.calls == 3
    record = planner.logger.read()[-1]
    assert record["error"] and record["attempts"] == 3  # first try = attempt 1, then 2 retries
    assert planner.last_attempts == 3


def test_timeout_retried_then_planner_error(misbehaving, make_planner):
    url, state = misbehaving
    state.mode, state.sleep_s = "sleep", 3.0
    planner = make_planner(url, timeout=0.5, max_retries=1)
    planner._model = "bad-model"
    with pytest.raises(PlannerError, match="timed out") as err:
        planner.check_completion("clear the table", IMG, IMG)
    assert state.calls == 2
    assert err.value.kind == "timeout" and err.value.attempts == 2


def test_connection_refused_is_planner_error(make_planner):
    from planner.server.background import free_port

    planner = make_planner(f"http://127.0.0.1:{free_port()}/v1", max_retries=1, model_name="m")
    with pytest.raises(PlannerError, match="connection failed") as err:
        planner.predict_bbox("grasp", IMG)
    assert err.value.kind == "connection" and err.value.status is None and err.value.attempts == 2


def test_api_key_from_environment(misbehaving, make_planner, monkeypatch):
    url, state = misbehaving
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("DEXGRASPVLA_PLANNER_API_KEY", "sk-test-dexgrasp")
    make_planner(url).understand_prompt("clear the table")
    assert state.auth[-1] == "Bearer sk-test-dexgrasp"
    monkeypatch.delenv("DEXGRASPVLA_PLANNER_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-fallback")
    make_planner(url).understand_prompt("clear the table")
    assert state.auth[-1] == "Bearer sk-openai-fallback"
    make_planner(url, api_key="explicit").understand_prompt("clear the table")
    assert state.auth[-1] == "Bearer explicit"


def test_model_discovered_from_models_endpoint(misbehaving, make_planner):
    url, state = misbehaving
    assert make_planner(url).model_name == "bad-model"
    assert make_planner(url, model_name="given").model_name == "given"


def test_plain_sentence_instruction_accepted(misbehaving, make_planner):
    url, state = misbehaving
    state.mode, state.custom = "custom", "Grasp the blue ball in the middle of the table."
    result = make_planner(url).propose_instruction("clear the table", IMG, IMG)
    assert result.instruction == "Grasp the blue ball in the middle of the table."


def test_fenced_and_verdict_line_replies(misbehaving, make_planner):
    url, state = misbehaving
    state.mode = "custom"
    state.custom = "Here you go:\n```json\n{'bbox_2d': [100, 50, 700, 300], 'label': 'red cube',}\n```"
    box = make_planner(url).predict_bbox("grasp the red cube", IMG)
    assert box.bbox.as_list() == [100, 50, 640, 300]  # clamped to the image
    state.custom = "The cube is between the fingers, nothing false about it.\nVerdict: True"
    assert make_planner(url).verify_grasp("grasp the red cube", IMG, IMG).success is True
