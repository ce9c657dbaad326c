"""The local planner backend (backend=transformers) end to end on a tiny random Qwen2-VL.

The model is built offline by ``planner.backends.tiny_model`` into a tmp folder and loaded back
with ``from_pretrained(..., local_files_only=True)``. Its replies are noise, so the tests check
the plumbing: the chat template holds the task prompt and one placeholder per image, the image
tokens match the images sent, noise is rejected with the planner's parse errors after the
configured retries, and a reply forced through ``generate`` (``ScriptedReply``) is parsed for
every task. Torch runs on one thread (the machine is shared; 2 threads were 10x slower here).
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from planner import DexGraspVLAPlanner, PlannerError, prompts  # noqa: E402
from planner.backends import PARSE_FAILURE_KINDS, HTTPTransport  # noqa: E402
from planner.backends import transformers_backend as tb  # noqa: E402
from planner.backends.tiny_model import SPECIAL_TOKENS, ScriptedReply, build_tiny_qwen2vl  # noqa: E402
from planner.backends.transformers_backend import TransformersTransport  # noqa: E402
from planner.types import BBoxFormat  # noqa: E402

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(7)
HEAD = RNG.integers(0, 256, (60, 80, 3), dtype=np.uint8)      # BGR, like the cameras
WRIST = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)

GOOD = {
    "understand_prompt": '{"reasoning": "all of them", "targets": ["red cube", "blue ball"], "all_objects": true}',
    "propose_instruction": '{"reasoning": "free", "target": "red cube", '
                           '"instruction": "Grasp the red cube on the right side of the table."}',
    "predict_bbox": '```json\n{"bbox_2d": [10, 20, 50, 40], "label": "red cube", "description": "right"}\n```',
    "verify_grasp": '{"reasoning": "between the fingers", "success": true}',
    "check_completion": '{"reasoning": "one left", "remaining": ["blue ball"], "done": false}',
}

CALLS = {  # task -> (method name, args, number of images in the prompt)
    "understand_prompt": ("understand_prompt", ("clear the table", HEAD), 1),
    "propose_instruction": ("propose_instruction", ("clear the table", HEAD, HEAD), 2),
    "predict_bbox": ("predict_bbox", ("Grasp the red cube.", HEAD), 1),
    "verify_grasp": ("verify_grasp", ("Grasp the red cube.", HEAD, WRIST), 2),
    "check_completion": ("check_completion", ("clear the table", HEAD, HEAD), 2),
}


def call(planner: DexGraspVLAPlanner, task: str) -> Any:
    name, args, _ = CALLS[task]
    return getattr(planner, name)(*args)


def prompt_for(task: str) -> prompts.Prompt:
    _, args, _ = CALLS[task]
    if task == "predict_bbox":
        return prompts.predict_bbox(*args, BBoxFormat.ABSOLUTE)
    return getattr(prompts, task)(*args)


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL folder (seed 1: its greedy replies are non-empty noise)."""
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"), seed=1)


@pytest.fixture
def transport(tiny_dir) -> TransformersTransport:
    return TransformersTransport(tiny_dir, device="cpu")


@pytest.fixture
def make_planner(transport):
    def factory(**kwargs: Any) -> DexGraspVLAPlanner:
        kwargs.setdefault("timeout", 60.0)
        kwargs.setdefault("max_tokens", 8)
        return DexGraspVLAPlanner(transport=transport, **kwargs)

    return factory


@pytest.fixture
def count_generate(transport, monkeypatch) -> list[dict[str, Any]]:
    """Wraps the loaded model's ``generate``; every call's kwargs are recorded."""
    model = transport.hf_model
    real = model.generate
    calls: list[dict[str, Any]] = []

    def generate(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return calls


def script(transport: TransformersTransport, *texts: str) -> ScriptedReply:
    """Make the transport's next generations write ``texts`` (the last repeats)."""
    scripted = ScriptedReply.for_texts(transport.processor.tokenizer, *texts)
    transport.generate_kwargs["logits_processor"] = transformers.LogitsProcessorList([scripted])
    return scripted


# ---------------------------------------------------------------------- the prompt reaching the model
@pytest.mark.parametrize("task", list(CALLS))
def test_prompt_has_the_task_text_and_one_placeholder_per_image(task, make_planner, transport, monkeypatch):
    # No PNG/JPEG encoding on the way in: the pixels go to the processor as arrays.
    import cv2

    monkeypatch.setattr(cv2, "imencode", lambda *a, **k: pytest.fail("image encoded for a local model"))
    planner = make_planner(parse_retries=0)
    try:
        call(planner, task)
    except PlannerError as exc:  # noise from the random model
        assert exc.kind in PARSE_FAILURE_KINDS
    request = transport.last_request
    tokenizer = transport.processor.tokenizer
    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))
    n_images = CALLS[task][2]

    # One <|vision_start|><|image_pad|>...<|vision_end|> per image, each pad run as long as its patch grid says.
    assert len(request.image_grid_thw) == n_images
    merge = transport.processor.image_processor.merge_size
    expected = [t * h * w // merge**2 for t, h, w in request.image_grid_thw]
    assert request.input_ids.count(ids["<|vision_start|>"]) == n_images
    assert request.input_ids.count(ids["<|vision_end|>"]) == n_images
    assert request.input_ids.count(ids["<|image_pad|>"]) == sum(expected) == request.image_tokens > 0
    runs, run = [], 0
    for token in request.input_ids + [-1]:
        if token == ids["<|image_pad|>"]:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert runs == expected
    # 60x80 head image: resized to 56x84 (multiples of 28) -> 2x3 patches of 28 px after merging
    assert request.image_grid_thw[0] == [1, 4, 6]

    # The chat template carries the system prompt and the task's text parts, in order, around the images.
    prompt = prompt_for(task)
    text = request.prompt_text
    assert text.startswith("<|im_start|>system\n" + prompts.SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    expected_user = "".join(
        "<|vision_start|><|image_pad|><|vision_end|>" if isinstance(p, prompts.ImagePart) else p for p in prompt.parts
    )
    assert f"<|im_start|>user\n{expected_user}<|im_end|>" in text
    assert f"Task: {task}\n" in tokenizer.decode(request.input_ids, skip_special_tokens=True)


def test_same_messages_as_the_http_backend_but_images_as_rgb_arrays(transport):
    prompt = prompt_for("verify_grasp")
    local = DexGraspVLAPlanner(transport=transport)._build_messages(prompt, [])[0]
    http_planner = DexGraspVLAPlanner("http://127.0.0.1:9/v1", model_name="m")
    try:
        remote = http_planner._build_messages(prompt, [])[0]
    finally:
        http_planner.close()

    def without_images(messages: list) -> list:
        return [[p for p in m["content"] if p["type"] == "text"] for m in messages]

    assert without_images(local) == without_images(remote)
    images = [p for p in local[1]["content"] if p["type"] == "image"]
    assert len(images) == 2 and [p for p in remote[1]["content"] if p["type"] == "image_url"]
    np.testing.assert_array_equal(images[0]["image"], HEAD[..., ::-1])    # BGR camera -> RGB for the processor
    np.testing.assert_array_equal(images[1]["image"], WRIST[..., ::-1])


def test_data_url_images_are_accepted_too(transport):
    """OpenAI-style image_url parts (data URLs) work as well: the same pixels reach the processor."""
    http = HTTPTransport("http://127.0.0.1:9/v1", model_name="m")
    try:
        url_part = http.image_part(HEAD)
    finally:
        http.close()
    results = []
    for part in (url_part, transport.image_part(HEAD)):
        messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, part]}]
        script(transport, "ok")
        assert transport.complete(messages, model=None, max_tokens=4, temperature=0.0,
                                  deadline=time.monotonic() + 30).text == "ok"
        results.append((transport.last_request.input_ids, transport.last_request.image_grid_thw))
    assert results[0] == results[1]
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]}]
    with pytest.raises(tb.TransportFailure, match="data URLs only") as err:
        transport.complete(bad, model=None, max_tokens=4, temperature=0.0, deadline=time.monotonic() + 30)
    assert err.value.kind == "bad_input" and not err.value.retryable


# ---------------------------------------------------------------------- replies: rejected or parsed
@pytest.mark.parametrize("task", ["understand_prompt", "predict_bbox", "verify_grasp", "check_completion"])
def test_noise_is_rejected_after_the_parse_retries(task, make_planner, count_generate, tmp_path):
    planner = make_planner(parse_retries=2, max_retries=3, episode_dir=tmp_path)
    with pytest.raises(PlannerError, match=rf"\[{task}\] unusable reply after 3 attempt") as err:
        call(planner, task)
    assert err.value.kind in PARSE_FAILURE_KINDS and err.value.attempts == 3 and err.value.status is None
    assert len(count_generate) == 3                       # first try + parse_retries=2, nothing else
    assert planner.last_attempts == 3
    record = planner.logger.read()[-1]
    assert record["task"] == task and record["attempts"] == 3 and record["error"]
    assert record["backend"] == "transformers" and record["device"] == "cpu" and record["dtype"] == "fp32"
    assert record["model"] == planner.transport.model and record["response"] == err.value.reply
    assert [c["generation_config"].do_sample for c in count_generate] == [False] * 3   # greedy throughout


def test_retries_sample_at_retry_temperature(make_planner, count_generate):
    planner = make_planner(parse_retries=2, retry_temperature=0.7)
    with pytest.raises(PlannerError):
        planner.verify_grasp("Grasp the red cube.", HEAD, WRIST)
    configs = [c["generation_config"] for c in count_generate]
    assert [c.do_sample for c in configs] == [False, True, True]
    assert [c.temperature for c in configs[1:]] == [0.7, 0.7] and configs[1].top_k == 0
    assert all(c.max_new_tokens == 8 for c in configs)


@pytest.mark.parametrize("task", list(CALLS))
def test_a_reply_forced_through_generate_is_parsed(task, make_planner, transport, tmp_path):
    planner = make_planner(max_tokens=160, episode_dir=tmp_path)
    script(transport, GOOD[task])
    result = call(planner, task)
    assert planner.last_attempts == 1 and result.raw == GOOD[task]
    if task == "understand_prompt":
        assert result.targets == ["red cube", "blue ball"] and result.all_objects is True
    elif task == "propose_instruction":
        assert result.instruction == "Grasp the red cube on the right side of the table."
        assert result.target == "red cube"
    elif task == "predict_bbox":
        assert result.bbox.as_list() == [10, 20, 50, 40] and result.label == "red cube"
    elif task == "verify_grasp":
        assert result.success is True and result.reasoning == "between the fingers"
    else:
        assert result.done is False and result.remaining == ["blue ball"]
    record = planner.logger.read()[-1]
    assert record["error"] is None and record["attempts"] == 1
    assert record["usage"]["completion_tokens"] == len(transport.last_request.new_token_ids)
    assert record["usage"]["image_tokens"] == transport.last_request.image_tokens > 0


def test_a_bad_reply_then_a_good_one(make_planner, transport, count_generate):
    planner = make_planner(max_tokens=80, parse_retries=1)
    script(transport, "The robot holds it, I think.", GOOD["verify_grasp"])
    assert planner.verify_grasp("Grasp the red cube.", HEAD, WRIST).success is True
    assert planner.last_attempts == 2 and len(count_generate) == 2

    script(transport, "The robot holds it, I think.")
    with pytest.raises(PlannerError, match="unusable reply after 2 attempt") as err:
        planner.verify_grasp("Grasp the red cube.", HEAD, WRIST)
    assert err.value.kind == "bad_reply" and err.value.reply == "The robot holds it, I think."

    script(transport, '{"bbox_2d": [500, 500, 900, 900], "label": "x", "description": "x"}')   # outside the image
    with pytest.raises(PlannerError) as err:
        planner.predict_bbox("Grasp the red cube.", HEAD)
    assert err.value.kind == "bad_reply" and err.value.attempts == 2


def test_empty_output_is_an_unusable_reply(make_planner, transport, count_generate):
    planner = make_planner(parse_retries=1, max_retries=3)
    script(transport, "", "   ")
    with pytest.raises(PlannerError, match="generated no text") as err:
        planner.check_completion("clear the table", HEAD, HEAD)
    assert err.value.kind == "empty_output" and err.value.attempts == 2 and len(count_generate) == 2


# ---------------------------------------------------------------------- failures
def test_generation_is_stopped_at_the_attempt_deadline(make_planner, transport, count_generate):
    planner = make_planner(timeout=0.3, max_retries=2, parse_retries=2, max_tokens=100_000)
    script(transport, "x" * 100_000)
    start = time.monotonic()
    with pytest.raises(PlannerError, match="deadline") as err:
        planner.verify_grasp("Grasp the red cube.", HEAD, WRIST)
    assert time.monotonic() - start < 10
    assert err.value.kind == "timeout" and err.value.attempts == 1 and not err.value.retryable
    assert len(count_generate) == 1 and "not retried" in str(err.value)


@pytest.mark.parametrize("error, kind", [
    (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "out_of_memory"),
    (lambda: RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"), "out_of_memory"),
    (lambda: RuntimeError("shape mismatch"), "generation"),
    (lambda: ValueError("bad generation config"), "generation"),
])
def test_generate_errors_become_planner_errors_without_retry(error, kind, make_planner, transport, monkeypatch):
    calls = []

    def generate(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise error()

    monkeypatch.setattr(transport.hf_model, "generate", generate)
    planner = make_planner(max_retries=3, parse_retries=3)
    with pytest.raises(PlannerError, match="generation failed after 1 attempt") as err:
        planner.predict_bbox("Grasp the red cube.", HEAD)
    assert err.value.kind == kind and err.value.attempts == 1 and not err.value.retryable
    assert len(calls) == 1 and err.value.status is None


def test_unloadable_folders(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        TransformersTransport(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        TransformersTransport(tmp_path)
    broken = tmp_path / "no_weights"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").unlink()
    planner = DexGraspVLAPlanner(transport=TransformersTransport(broken, device="cpu"), max_retries=3)
    with pytest.raises(PlannerError, match="cannot load the model") as err:
        planner.warm_up()
    assert err.value.kind == "load" and err.value.attempts == 1 and not err.value.retryable
    with pytest.raises(PlannerError) as err:      # a task call reports the same, without retrying
        planner.verify_grasp("x", HEAD, WRIST)
    assert err.value.kind == "load" and err.value.attempts == 1
    no_template = tmp_path / "no_template"
    shutil.copytree(tiny_dir, no_template)
    (no_template / "chat_template.jinja").unlink()
    with pytest.raises(PlannerError, match="no chat template") as err:
        DexGraspVLAPlanner(transport=TransformersTransport(no_template, device="cpu")).warm_up()
    assert err.value.kind == "load"


# ---------------------------------------------------------------------- configuration and the runtime
def test_runtime_builds_the_local_planner_from_config_once_per_process(tiny_dir, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from inference_utils.runtime.agent import build_planner
    from inference_utils.runtime.config import compose_config

    cfg = compose_config(["planner=transformers", f"planner.model_path={tiny_dir}", "planner.max_new_tokens=96"])
    section = OmegaConf.to_container(cfg.planner, resolve=True)
    assert section["backend"] == "transformers"

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the local planner touched the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    tb.unload_models()
    first = build_planner(section, tmp_path / "a")          # loads here (warm_up), before any motion
    assert first.backend == "transformers" and first.base_url is None and first.max_tokens == 96
    assert first.transport.device == "cpu" and first.transport.dtype == torch.float32   # auto on a CPU-only box
    assert first.transport.min_pixels == 3136 and first.transport.max_pixels == 1003520
    assert first.transport.processor.image_processor.size["longest_edge"] == 1003520
    assert first.parse_retries == 1 and first.max_retries == 0 and first.retry_temperature == 0.7
    assert len(tb._MODELS) == 1
    second = build_planner(section, tmp_path / "b")
    assert second.transport.hf_model is first.transport.hf_model and len(tb._MODELS) == 1   # loaded once
    script(second.transport, GOOD["verify_grasp"])
    assert second.verify_grasp("Grasp the red cube.", HEAD, WRIST).success is True
    assert (tmp_path / "b" / "planner_log.jsonl").is_file()


def test_backend_selection_and_config_errors(tiny_dir):
    http = DexGraspVLAPlanner.from_config({"base_url": "http://127.0.0.1:9/v1", "model_name": "m"})
    assert http.backend == "http" and isinstance(http.transport, HTTPTransport)
    http.close()
    with pytest.raises(ValueError, match="planner.backend"):
        DexGraspVLAPlanner.from_config({"backend": "onnx", "base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(ValueError, match="model_path: required"):
        DexGraspVLAPlanner.from_config({"backend": "transformers"})
    with pytest.raises(ValueError, match="not read from config files"):
        DexGraspVLAPlanner.from_config({"backend": "transformers", "model_path": str(tiny_dir), "api_key": "sk-x"})
    with pytest.raises(ValueError, match="planner.dtype"):
        DexGraspVLAPlanner.from_config({"backend": "transformers", "model_path": str(tiny_dir), "dtype": "int3"})
    with pytest.raises(ValueError, match="min_pixels"):
        TransformersTransport(tiny_dir, min_pixels=5000, max_pixels=1000)
    local = DexGraspVLAPlanner.from_config({"backend": "Transformers", "model_path": str(tiny_dir), "device": "cpu",
                                            "model_name": "tiny", "bbox_format": "normalized_1000"})
    assert local.model_name == "tiny" and local.bbox_format is BBoxFormat.NORMALIZED_1000
    yaml_cfg = (REPO / "inference_utils" / "config" / "planner" / "transformers.yaml").read_text()
    assert "backend: transformers" in yaml_cfg and "model_path: null" in yaml_cfg


def test_device_and_dtype_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert tb.select_device("auto") == "cpu" and tb.select_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match="CUDA is not available"):
        tb.select_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        tb.select_device("mps")
    with pytest.raises(ValueError, match="expected auto"):
        tb.select_device("tpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert tb.select_device("auto") == "mps" and tb.select_dtype("auto", "mps") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert tb.select_device(None) == "cuda" and tb.select_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert tb.select_dtype("auto", "cuda:0") == torch.float16
    assert tb.select_dtype("bf16", "cpu") == torch.bfloat16 and tb.select_dtype("FP32", "cuda") == torch.float32


def test_tiny_qwen2_5_vl_runs_through_the_same_backend(tmp_path):
    folder = build_tiny_qwen2vl(tmp_path / "tiny25", family="qwen2_5_vl", seed=0)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    transport = TransformersTransport(folder, device="cpu")
    planner = DexGraspVLAPlanner(transport=transport, max_tokens=96)
    script(transport, GOOD["check_completion"])
    assert planner.check_completion("clear the table", HEAD, HEAD).remaining == ["blue ball"]
    assert type(transport.hf_model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert transport.last_request.image_tokens > 0 and len(transport.last_request.image_grid_thw) == 2
