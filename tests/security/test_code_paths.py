"""Static guard: the project's own code has no path from data to code execution.

Nothing may unpickle except the explicit legacy converter (``controller/convert_checkpoint.py``,
behind ``--trust-pickle``); configs are built through ``controller.common.registry`` only (never
Hydra's ``instantiate``, which imports any dotted path); no ``eval``/``exec``; no eval resolver.
This reads the source files, so a new call site is caught when it is written.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("controller", "inference_utils", "planner", "sim", "benchmarks")
TOP_LEVEL = ("train.py", "inference.py", "attention_map_visualizer.py")
LEGACY_CONVERTER = Path("controller/convert_checkpoint.py")
#: Replays the original code's own loading (``torch.load(pickle_module=dill)``) in a child process,
#: on a file the same benchmark run wrote moments before, to measure the original's memory.
ORIGINAL_REPLAY = Path("benchmarks/reference_side_by_side.py")


def _sources():
    for pkg in PACKAGES:
        yield from sorted((REPO / pkg).rglob("*.py"))
    for name in TOP_LEVEL:
        if (REPO / name).is_file():
            yield REPO / name


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            base = ast.unparse(f.value) if isinstance(f, ast.Attribute) else ""
            kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg}
            yield node, name, base, kwargs


def _violations():
    out = []
    for path in _sources():
        rel = path.relative_to(REPO)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
        for node, name, base, kwargs in _calls(tree):
            where = f"{rel}:{node.lineno}"
            if name in ("eval", "exec") and base == "":
                out.append(f"{where}: {name}()")
            if base == "torch" and name == "load" and kwargs.get("weights_only") != "True" \
                    and rel not in (LEGACY_CONVERTER, ORIGINAL_REPLAY):
                out.append(f"{where}: torch.load without weights_only=True")
            if base in ("np", "numpy") and name == "load" and kwargs.get("allow_pickle") != "False":
                out.append(f"{where}: np.load without allow_pickle=False")
            if base in ("pickle", "dill", "cloudpickle") and name in ("load", "loads", "Unpickler"):
                out.append(f"{where}: {base}.{name}")
            if name == "instantiate" and base in ("hydra.utils", "utils"):
                out.append(f"{where}: hydra.utils.instantiate (use controller.common.registry.instantiate)")
            if name == "register_new_resolver":
                out.append(f"{where}: OmegaConf resolver registered")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "hydra.utils" and \
                    any(a.name == "instantiate" for a in node.names):
                out.append(f"{rel}:{node.lineno}: imports hydra.utils.instantiate")
    return out


def test_no_unpickling_instantiate_or_eval_in_project_code():
    assert _violations() == []


def test_the_guard_sees_a_violation(tmp_path, monkeypatch):
    """The scanner itself works: a planted bad call is reported."""
    bad = tmp_path / "controller"
    bad.mkdir()
    (bad / "bad.py").write_text("import torch, numpy as np\nx = torch.load('f')\ny = np.load('g')\neval('1')\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = _violations()
    assert any("torch.load" in v for v in found) and any("np.load" in v for v in found) \
        and any("eval()" in v for v in found)


@pytest.mark.parametrize("path", [LEGACY_CONVERTER])
def test_the_legacy_converter_unpickles_only_when_trusted(path):
    text = (REPO / path).read_text()
    assert "trust_pickle" in text and "--trust-pickle" in text
