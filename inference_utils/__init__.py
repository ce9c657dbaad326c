"""inference_utils package."""
