"""Mask helpers, the synthetic generator and a smoke run of ``benchmarks/perception.py``."""
from __future__ import annotations

import importlib.util
import os

import numpy as np

from inference_utils.perception import mask_iou, mask_to_box
from inference_utils.perception.masks import keep_components

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_mask_iou_and_box():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    assert mask_iou(a, b) == 1.0 and mask_iou(a, b, empty_value=0.0) == 0.0
    a[2:6, 2:6] = True
    b[4:8, 2:6] = True
    assert abs(mask_iou(a, b) - 8 / 24) < 1e-9
    assert mask_to_box(a) == (2, 2, 6, 6) and mask_to_box(np.zeros((3, 3), bool)) is None


def test_keep_components():
    m = np.zeros((20, 20), bool)
    m[1:8, 1:8] = True
    m[15:17, 15:17] = True
    assert keep_components(m).sum() == 49
    anchor = np.zeros_like(m)
    anchor[16, 16] = True
    kept = keep_components(m, anchor=anchor, min_anchor_frac=0.2, min_rel_area=0.0)
    assert kept.sum() == 4


def test_synthetic_sequence_contract(grasp_sequence):
    seq = grasp_sequence(0, occlusion=0.5)
    assert len(seq) == 70 and seq.frames[0].shape == (480, 640, 3) and seq.frames[0].dtype == np.uint8
    assert seq.on_table[0] and not seq.on_table[-1]
    areas = np.array([m.sum() for m in seq.masks])
    assert areas.min() < 0.9 * areas[0]  # the hand occludes the target at some point
    top0, top_end = mask_to_box(seq.masks[0])[1], mask_to_box(seq.masks[-1])[1]
    assert top_end < top0 - 50  # lifted


def test_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_perception", os.path.join(REPO, "benchmarks", "perception.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--source", "synthetic", "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "tracker    IoU on table" in out and "ms/frame" in out


def test_latency_benchmark_smoke(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_perception", os.path.join(REPO, "benchmarks", "perception.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "latency.json"
    assert mod.main(["--latency", "--backends", "grabcut,flow", "--frames", "2", "--images", "1",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "latency at 480x640" in text and "grabcut" in text and "flow" in text and "1.0x" in text
    import json

    res = json.loads(out.read_text())
    assert [r["name"] for r in res["segmenters"]] == ["grabcut"] and len(res["trackers"][0]["ms"]) == 2
