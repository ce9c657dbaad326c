"""Offline planner server: an OpenAI-compatible chat API answering planner prompts with classical vision.

Run it with ``python -m planner.server --host 127.0.0.1 --port 8001``; build the app in code
with ``create_app()``.
"""

from planner.server.app import MODEL_ID, create_app

__all__ = ["MODEL_ID", "create_app"]
