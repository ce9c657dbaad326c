"""Command line: ``python -m planner.server --host 127.0.0.1 --port 8001 [--log-dir DIR]``."""

from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

import uvicorn

from planner.server.app import MODEL_ID, create_app


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parse arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(description="DexGraspVLA offline planner (OpenAI-compatible, no VLM).")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-dir", default=None, help="directory for server_requests.jsonl")
    parser.add_argument("--model-id", default=MODEL_ID, help="model id reported by /v1/models")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_app(args.model_id, args.log_dir), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
