"""Image <-> base64 data URL conversion shared by the planner client and the offline server.

Images inside the planner are numpy ``uint8`` arrays in **BGR** order (as the cameras
deliver them), shape ``(H, W, 3)``. On the wire they are PNG or JPEG data URLs, which every
OpenAI-compatible VLM server accepts.
"""

from __future__ import annotations

import base64
import binascii
import re

import cv2
import numpy as np

_DATA_URL = re.compile(r"^data:image/(?P<fmt>[a-zA-Z0-9.+-]+);base64,(?P<data>.*)$", re.DOTALL)


class ImageDecodeError(ValueError):
    """A data URL did not hold a decodable image."""


def check_bgr_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate a BGR image (``uint8``, ``(H, W, 3)``; a 4-channel RGBM is cut to 3) and return it."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {image.dtype}")
    return np.ascontiguousarray(image[..., :3])


def encode_png(image_bgr: np.ndarray) -> bytes:
    """Encode a BGR image as PNG bytes."""
    ok, buf = cv2.imencode(".png", check_bgr_image(image_bgr))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def to_data_url(image_bgr: np.ndarray, fmt: str = "png", jpeg_quality: int = 90) -> str:
    """Encode a BGR image as a ``data:image/<fmt>;base64,...`` URL (``fmt`` is png or jpeg)."""
    image = check_bgr_image(image_bgr)
    fmt = fmt.lower()
    if fmt == "png":
        ok, buf = cv2.imencode(".png", image)
    elif fmt in ("jpg", "jpeg"):
        fmt = "jpeg"
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise ValueError(f"unsupported image format {fmt!r} (use 'png' or 'jpeg')")
    if not ok:
        raise ValueError(f"{fmt} encoding failed")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def data_url_bytes(url: str) -> bytes:
    """The encoded image bytes of a base64 image data URL (not decoded); raises ``ImageDecodeError``."""
    if not isinstance(url, str):
        raise ImageDecodeError("image url must be a string")
    match = _DATA_URL.match(url.strip())
    if match is None:
        raise ImageDecodeError("image url must be a base64 data URL 'data:image/<fmt>;base64,...'")
    try:
        return base64.b64decode(match.group("data"), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"invalid base64 image data: {exc}") from exc


def from_data_url(url: str) -> np.ndarray:
    """Decode a base64 image data URL to a BGR ``uint8`` array; raises ``ImageDecodeError``.

    For images from our own client; a server decoding untrusted images checks their header size
    first (``planner.server.app.decode_image_url``)."""
    raw = data_url_bytes(url)
    array = np.frombuffer(raw, dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_COLOR) if array.size else None
    if image is None:
        raise ImageDecodeError("image data could not be decoded (not a PNG/JPEG/...)")
    return image
