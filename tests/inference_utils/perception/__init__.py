"""Tests of inference_utils.perception."""
