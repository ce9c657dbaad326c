"""DexGraspVLA planner: one typed method per task over a VLM backend, and an offline server.

Backends (``planner.backends``): an OpenAI-compatible server over HTTP (``backend: http``) or
Qwen2-VL / Qwen2.5-VL run locally with transformers (``backend: transformers``, imported lazily).

Public API::

    from planner import DexGraspVLAPlanner, BBoxFormat, PlannerError
"""

from planner.backends import ChatTransport, HTTPTransport
from planner.client import API_KEY_ENV_VARS, BACKENDS, DexGraspVLAPlanner, resolve_api_key
from planner.logger import PlannerLogger
from planner.types import (
    BBox,
    BBoxFormat,
    BoxPrediction,
    CompletionCheck,
    FailedTarget,
    GraspVerification,
    Instruction,
    PlannerError,
    PromptUnderstanding,
    Task,
)

__all__ = [
    "API_KEY_ENV_VARS", "BACKENDS", "BBox", "BBoxFormat", "BoxPrediction", "ChatTransport", "CompletionCheck",
    "DexGraspVLAPlanner", "FailedTarget", "GraspVerification", "HTTPTransport", "Instruction", "PlannerError",
    "PlannerLogger",
    "PromptUnderstanding", "Task", "resolve_api_key",
]
