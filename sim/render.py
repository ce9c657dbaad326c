"""Offscreen rendering of the head and wrist cameras (RGB as BGR, plus per-object segmentation).

The GL back end is chosen before ``mujoco`` is imported: ``MUJOCO_GL`` defaults to ``egl``, or
``osmesa`` when no libEGL is installed (import ``sim`` before ``mujoco`` for this to apply). One GL context is created per :class:`CameraRig` and kept across scenes;
only the model-dependent MuJoCo render context is rebuilt when a new scene is bound, which keeps
resets cheap and avoids creating thousands of GL contexts during long collection runs.
"""
from __future__ import annotations

import os

if "MUJOCO_GL" not in os.environ:  # prefer EGL; fall back to OSMesa when libEGL is absent
    import ctypes.util
    os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "osmesa"
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import mujoco  # noqa: E402
import numpy as np  # noqa: E402


def _preload_triton() -> None:
    """Load triton (if installed) before the first GL context.

    Mesa's software rasteriser (llvmpipe) and triton each bring an LLVM; when triton is loaded
    *after* a Mesa context exists -- which happens when torch imports ``torch._dynamo``, e.g. via
    diffusers -- the process segfaults. Loading triton first avoids the clash. Costs ~0.3 s once.
    """
    import importlib.util
    if importlib.util.find_spec("triton") is not None:
        try:
            import triton  # noqa: F401
        except Exception:  # pragma: no cover - a broken triton must not break rendering
            pass


def _make_gl_context(width: int, height: int):
    _preload_triton()
    try:
        from mujoco import gl_context
        ctx = gl_context.GLContext(width, height)
    except Exception as exc:  # pragma: no cover - depends on the machine's GL stack
        raise RuntimeError(
            f"offscreen rendering failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')}: {exc}. "
            "Install the EGL packages (libegl1 libegl-mesa0 libgl1-mesa-dri) or set "
            "MUJOCO_GL=osmesa (needs libosmesa6) before importing sim.") from exc
    return ctx


class CameraRig:
    """Renders named cameras of the bound model: BGR images and object-index segmentation.

    Args:
        height, width: image size (the model's offscreen buffer must be at least this big).
        shadows: keep shadows on (slow in software rendering).
    """

    def __init__(self, height: int, width: int, shadows: bool = False) -> None:
        self.height, self.width, self.shadows = int(height), int(width), bool(shadows)
        self._gl = _make_gl_context(self.width, self.height)
        self._gl.make_current()
        self.model = None
        self._ctx = None
        self._scene = None
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._pert = mujoco.MjvPerturb()
        self._option = mujoco.MjvOption()
        self._option.sitegroup[:] = 0
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._buf = np.empty((self.height, self.width, 3), dtype=np.uint8)
        self._geom_type = int(mujoco.mjtObj.mjOBJ_GEOM)

    def bind(self, model: mujoco.MjModel, object_bodies: list[int]) -> None:
        """Use ``model`` from now on; ``object_bodies`` gives each object's body id (index order)."""
        if model.vis.global_.offwidth < self.width or model.vis.global_.offheight < self.height:
            raise ValueError("model offscreen buffer is smaller than the requested image size")
        self._gl.make_current()
        if self._ctx is not None:
            self._ctx.free()
        self.model = model
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        self._scene = mujoco.MjvScene(model, maxgeom=1000)
        flags = self._scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self.shadows
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        self.geom_to_obj = np.full(model.ngeom, -1, dtype=np.int16)
        for idx, body in enumerate(object_bodies):
            self.geom_to_obj[model.geom_bodyid == body] = idx
        self._cam_ids = {}

    def _camera_id(self, name: str) -> int:
        cid = self._cam_ids.get(name)
        if cid is None:
            cid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if cid < 0:
                raise ValueError(f"camera={name!r} not found in the model")
            self._cam_ids[name] = cid
        return cid

    def _update(self, data: mujoco.MjData, camera: str) -> None:
        if self._ctx is None:
            raise RuntimeError("CameraRig: bind(model, ...) before rendering")
        self._gl.make_current()
        self._cam.fixedcamid = self._camera_id(camera)
        mujoco.mjv_updateScene(self.model, data, self._option, self._pert, self._cam,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)

    def _draw(self, segment: bool) -> np.ndarray:
        flags = self._scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = segment
        flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = segment
        mujoco.mjr_render(self._rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(self._buf, None, self._rect, self._ctx)
        return self._buf[::-1]  # GL rows are bottom-up

    def rgb(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """BGR uint8 (H, W, 3) image from ``camera``."""
        self._update(data, camera)
        return np.ascontiguousarray(self._draw(False)[:, :, ::-1])

    def rgb_and_seg(self, data: mujoco.MjData, camera: str) -> tuple[np.ndarray, np.ndarray]:
        """BGR image and object-index segmentation (int16, -1 = not an object) from ``camera``."""
        self._update(data, camera)
        bgr = np.ascontiguousarray(self._draw(False)[:, :, ::-1])
        ids = self._draw(True)
        # segment colour encodes (scene geom index + 1); map it to the object index
        n = self._scene.ngeom
        lut = np.full(max(n + 1, 256), -1, dtype=np.int16)
        geoms = self._scene.geoms
        for i in range(n):
            g = geoms[i]
            if g.objtype == self._geom_type and 0 <= g.objid < len(self.geom_to_obj):
                lut[g.segid + 1] = self.geom_to_obj[g.objid]
        if n < 255:
            seg = lut[ids[:, :, 0]]
        else:  # pragma: no cover - scenes here have far fewer geoms
            code = ids[:, :, 0].astype(np.int32) | (ids[:, :, 1].astype(np.int32) << 8)
            seg = lut[np.minimum(code, len(lut) - 1)]
        return bgr, seg

    def close(self) -> None:
        """Release the MuJoCo render context and the GL context (safe to call twice)."""
        if self._gl is None:
            return
        self._gl.make_current()
        if self._ctx is not None:
            self._ctx.free()
            self._ctx = None
        self._gl.free()
        self._gl = None
