"""The real client against the real offline server over HTTP, one test per task, plus logging."""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest

from planner import BBox, BBoxFormat, PlannerError
from planner.synthetic import make_wrist, remove_object

pytestmark = pytest.mark.timeout(120)


def _rightmost(scene) -> dict:
    return max(scene.objects, key=lambda o: (o["bbox_head"][0] + o["bbox_head"][2]) / 2)


def test_models_discovered(offline_url, make_planner):
    planner = make_planner(offline_url)
    assert planner.model_name == "dexgraspvla-offline-planner"


def test_understand_prompt(offline_url, make_planner, scene):
    planner = make_planner(offline_url)
    everything = planner.understand_prompt("clear the table")
    assert everything.all_objects is True
    red = planner.understand_prompt("grasp the red cubes and the blue ball")
    assert red.all_objects is False
    assert any("red" in t for t in red.targets) and any("blue" in t for t in red.targets)
    with_image = planner.understand_prompt("clear the table", scene.image)
    assert len(with_image.targets) == len(scene.objects)


@pytest.mark.parametrize("fmt", [BBoxFormat.ABSOLUTE, BBoxFormat.NORMALIZED_1000])
def test_propose_then_box_hits_rightmost_object(offline_url, make_planner, scene, fmt):
    planner = make_planner(offline_url, bbox_format=fmt)
    instruction = planner.propose_instruction("clear the table", scene.image, scene.image)
    target = _rightmost(scene)
    assert target["colour"] in instruction.instruction
    assert "right" in instruction.instruction
    box = planner.predict_bbox(instruction.instruction, scene.image)
    assert isinstance(box.bbox, BBox)
    assert box.bbox.iou(BBox(*target["bbox_head"])) >= 0.7
    assert target["colour"] in box.label


def test_propose_over_http_avoids_a_failed_object(offline_url, make_planner, scene):
    """The avoid list travels in the prompt over the OpenAI chat API and the server honours it."""
    from planner.types import FailedTarget

    planner = make_planner(offline_url)
    first = planner.propose_instruction("clear the table", scene.image, scene.image)
    box = planner.predict_bbox(first.instruction, scene.image)
    second = planner.propose_instruction("clear the table", scene.image, scene.image,
                                         avoid=[FailedTarget(box.label, box.bbox, 1)])
    assert second.instruction != first.instruction
    other = planner.predict_bbox(second.instruction, scene.image)
    assert other.bbox.iou(box.bbox) < 0.2
    assert "failed before" in second.reasoning


def test_verify_grasp(offline_url, make_planner, scene):
    planner = make_planner(offline_url)
    index = scene.objects.index(_rightmost(scene))
    target = scene.objects[index]
    instruction = f"Grasp the {target['colour']} {target['shape']} on the right side of the table."
    bbox = BBox(*target["bbox_head"])
    after = remove_object(scene, index)
    held = make_wrist(1, scene.table_rgb, held_colour=target["colour"])
    empty = make_wrist(1, scene.table_rgb, held_colour=None)
    ok = planner.verify_grasp(instruction, after, held, bbox)
    assert ok.success is True and ok.reasoning
    assert planner.verify_grasp(instruction, after, empty, bbox).success is False
    # still on the table: not grasped, whatever the wrist shows
    assert planner.verify_grasp(instruction, scene.image, held, bbox).success is False


def test_check_completion(offline_url, make_planner, scene):
    planner = make_planner(offline_url)
    assert planner.check_completion("clear the table", scene.image, scene.image).done is False
    image = scene.image
    for i in range(len(scene.objects)):
        scene_copy = type(scene)(image, scene.objects, scene.table_rgb, scene.arm_mask)
        image = remove_object(scene_copy, i)
    result = planner.check_completion("clear the table", scene.image, image)
    assert result.done is True and result.remaining == []
    colour = scene.objects[0]["colour"]
    absent = next(c for c in ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
                  if all(o["colour"] != c for o in scene.objects))
    assert planner.check_completion(f"grasp the {absent} objects", scene.image, scene.image).done is True
    assert planner.check_completion(f"grasp the {colour} objects", scene.image, scene.image).done is False


def test_episode_logging(offline_url, make_planner, scene, tmp_path, server_log_dir):
    planner = make_planner(offline_url, episode_dir=tmp_path / "ep")
    instruction = planner.propose_instruction("clear the table", scene.image, scene.image)
    planner.predict_bbox(instruction.instruction, scene.image)
    records = planner.logger.read()
    assert [r["task"] for r in records] == ["propose_instruction", "predict_bbox"]
    first = records[0]
    urls = [p["image_url"]["url"] for m in first["prompt"] for p in m["content"] if p["type"] == "image_url"]
    assert urls == ["images/001_propose_instruction_initial_head.png", "images/001_propose_instruction_current_head.png"]
    assert all((tmp_path / "ep" / u).is_file() for u in urls)
    assert "base64" not in json.dumps(records)
    assert first["response"] and first["result"]["instruction"] == instruction.instruction
    assert first["duration_s"] > 0 and first["attempts"] == 1
    assert records[1]["result"]["bbox"]["x2"] > records[1]["result"]["bbox"]["x1"]
    assert (server_log_dir / "server_requests.jsonl").is_file()


def test_server_rejects_malformed_requests(offline_url):
    client = openai.OpenAI(base_url=offline_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="dexgraspvla-offline-planner", messages=[])
    assert bad.value.status_code == 400
    assert bad.value.body["type"] == "invalid_request_error" if "type" in bad.value.body else True
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="dexgraspvla-offline-planner", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    with pytest.raises(openai.BadRequestError):  # not a planner prompt
        client.chat.completions.create(model="dexgraspvla-offline-planner",
                                       messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Task: predict_bbox"}])
    import httpx
    response = httpx.post(offline_url + "/chat/completions", content=b"{not json", timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    response = httpx.post(offline_url + "/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0].role"


def test_concurrent_clients(offline_url, make_planner, scene):
    from concurrent.futures import ThreadPoolExecutor

    planners = [make_planner(offline_url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: p.check_completion("clear the table", scene.image, scene.image), planners))
    assert all(r.done is False for r in results)
    assert len({tuple(r.remaining) for r in results}) == 1


def test_invalid_image_rejected_by_client(offline_url, make_planner):
    planner = make_planner(offline_url)
    with pytest.raises(ValueError):
        planner.predict_bbox("grasp it", np.zeros((10, 10), np.uint8))
