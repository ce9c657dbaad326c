"""DexGraspVLA planner: OpenAI-compatible VLM client (one typed method per task) and offline server.

Public API::

    from planner import DexGraspVLAPlanner, BBoxFormat, PlannerError
"""

from planner.client import API_KEY_ENV_VARS, DexGraspVLAPlanner, resolve_api_key
from planner.logger import PlannerLogger
from planner.types import (
    BBox,
    BBoxFormat,
    BoxPrediction,
    CompletionCheck,
    GraspVerification,
    Instruction,
    PlannerError,
    PromptUnderstanding,
    Task,
)

__all__ = [
    "API_KEY_ENV_VARS", "BBox", "BBoxFormat", "BoxPrediction", "CompletionCheck", "DexGraspVLAPlanner",
    "GraspVerification", "Instruction", "PlannerError", "PlannerLogger", "PromptUnderstanding", "Task",
    "resolve_api_key",
]
