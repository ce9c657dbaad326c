"""Project hygiene: requirements.txt and pyproject.toml agree; entry points exist; no eval resolver."""
import re
from pathlib import Path

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_requirements_match_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines()
            if l.strip() and not l.strip().startswith("#")]
    assert sorted(map(_norm, deps)) == sorted(map(_norm, reqs))
    assert "torch==2.14.1" in map(_norm, deps) and "torchvision==0.29.1" in map(_norm, deps)


def test_configs_use_no_eval_resolver():
    for path in REPO.glob("**/config/**/*.yaml"):
        if ".venv" in path.parts:
            continue
        assert "${eval:" not in path.read_text(), path


def test_top_level_layout():
    for name in ["train.py", "train.sh", "attention_map_visualizer.py", "README.md", "requirements.txt",
                 "controller", "planner", "inference_utils", "sim", "tests", "benchmarks", ".ci/run"]:
        assert (REPO / name).exists(), name
    assert "make test" in (REPO / ".ci" / "run").read_text()
