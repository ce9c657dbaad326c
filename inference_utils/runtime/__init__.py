"""Inference runtime: Environment (devices) + Agent (planner, perception, controller) + loop.

Entry points: :func:`inference_utils.runtime.cli.main` (``inference.py``) and
:func:`inference_utils.runtime.session.run_session` (a composed config -> exit code, summary).
"""
from inference_utils.runtime.config import ConfigError, compose_config, validate_config

__all__ = ["ConfigError", "compose_config", "validate_config"]
