"""Inference runtime: Environment (devices) + Agent (planner, perception, controller) + loop.

Entry points: :func:`inference_utils.runtime.cli.main` (``inference.py``) and
:func:`inference_utils.runtime.session.run_session` (a composed config -> exit code, summary).
"""
__all__ = ["ConfigError", "compose_config", "validate_config"]


def __getattr__(name):  # lazy: ``inference.py --help`` must not import omegaconf/hydra
    if name in __all__:
        from inference_utils.runtime import config  # noqa: PLC0415

        return getattr(config, name)
    raise AttributeError(f"module 'inference_utils.runtime' has no attribute {name!r}")
