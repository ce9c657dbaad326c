"""Procedural MJCF for a scene: table, background, lights, head camera, robot and objects."""
from __future__ import annotations

import math

import numpy as np

from sim.config import SimConfig
from sim.robot_model import robot_actuators_xml, robot_body_xml
from sim.scene import ObjectSpec, SceneSpec

TABLE_CENTER = (0.42, 0.0)
TABLE_HALF = (0.52, 0.62, 0.025)
HEAD_CAM_POS = np.array([0.90, 0.0, 0.55])
HEAD_CAM_LOOKAT = np.array([0.44, 0.0, 0.02])
HEAD_CAM_FOVY = 50.0
WRIST_CAM_POS = np.array([-0.04, -0.12, 0.0])
WRIST_CAM_LOOKAT = np.array([0.0, 0.0, 0.2])

#: Rolling-resistance coefficient c_rr (dimensionless: resisting force / normal force) of the
#: objects on the table with ``SimConfig.rolling_friction``. Published figures: hard (steel) balls on
#: hard surfaces 1e-4 .. 1e-3 (R. Cross, "Coulomb's law for rolling friction", Am. J. Phys. 84, 221
#: (2016); Minkin & Sikes, "Coefficient of rolling friction - Lab experiment", Am. J. Phys. 86, 77
#: (2018)), softer balls / surfaces up to ~1e-2 (R. Cross, "Measurements of rolling friction with a
#: stringless pendulum"; billiard balls on cloth ~1e-2). Plastic / wooden toys on a wooden or
#: laminate table sit in between: 5e-3.
ROLLING_RESISTANCE = 0.005
#: MuJoCo's torsional friction is a length (max spin torque = value x normal force). For a contact
#: patch of radius a under uniform pressure the spin torque is (2/3) mu a N; mu ~ 1 and a ~ 3 mm
#: (a rigid toy on a wooden table) give 2e-3 m. Flat faces get several contact points, whose sliding
#: friction already resists spinning.
TORSION_LENGTH = 0.002


def rolling_radius(obj: ObjectSpec) -> float:
    """Radius (m) the object rolls on when it rolls: the sphere, the (lying) cylinder or capsule,
    the ellipsoid's smallest semi-axis, a dumbbell's end spheres; boxes and prisms (which tip
    rather than roll) get their smallest half-extent."""
    s = obj.size
    if "end_radius" in s:
        return float(s["end_radius"])
    if "radius" in s:
        return float(s["radius"])
    if "axes" in s:
        return float(min(s["axes"]))
    if "half" in s:
        return float(min(s["half"]))
    if "side" in s:
        return float(s["side"]) / (2 * math.sqrt(3))  # inradius of the triangle
    return float(min(s.get("bottom", obj.height / 2), obj.height / 2))


def contact_friction(obj: ObjectSpec, config: SimConfig) -> tuple[int, tuple[float, float, float]]:
    """``(condim, (sliding, torsional, rolling))`` of an object's geoms.

    Default (``rolling_friction=False``, the physics the shipped checkpoint was measured with):
    condim 4, i.e. sliding + torsional friction and no rolling resistance, so a ball pushed on the
    table rolls until it falls off. With ``rolling_friction``: condim 6 and a rolling length
    ``ROLLING_RESISTANCE x rolling_radius`` (MuJoCo's rolling friction is a length: resisting
    torque = value x normal force; a resisting force c_rr N at radius r is the torque c_rr r N).
    MuJoCo takes the larger value of the two geoms per coefficient, so the table's torsional and
    rolling values are 0 with this option (:func:`table_geom_xml`); the hand keeps its own.
    """
    if not config.rolling_friction:
        return 4, (obj.friction, 0.02, 0.001)
    return 6, (obj.friction, TORSION_LENGTH, ROLLING_RESISTANCE * rolling_radius(obj))


def table_geom_xml(config: SimConfig, pos=None, size=None) -> str:
    """The table geom (``pos``/``size`` override the scene table, e.g. a longer test table)."""
    pos = f"{TABLE_CENTER[0]} {TABLE_CENTER[1]} {-TABLE_HALF[2]}" if pos is None else _fmt(pos)
    size = TABLE_HALF if size is None else size
    friction = "0.8 0 0" if config.rolling_friction else "0.8 0.01 0.001"
    return (f'<geom name="table" type="box" pos="{pos}" size="{_fmt(size)}" material="table_mat" '
            f'contype="1" conaffinity="1" condim="3" friction="{friction}"/>')


def _fmt(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in v)


def look_at_xyaxes(pos: np.ndarray, target: np.ndarray, up: np.ndarray, roll: float = 0.0) -> str:
    """MJCF ``xyaxes`` for a camera at ``pos`` looking at ``target`` (image up towards ``up``)."""
    f = np.asarray(target, float) - np.asarray(pos, float)
    f /= np.linalg.norm(f)
    x = np.cross(f, up)
    x /= np.linalg.norm(x)
    y = np.cross(-f, x)
    if roll:
        c, s = math.cos(roll), math.sin(roll)
        x, y = c * x + s * y, -s * x + c * y
    return _fmt(np.concatenate([x, y]))


def _yaw_quat(yaw: float) -> str:
    return _fmt((math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)))


def mesh_assets(obj: ObjectSpec) -> str:
    """Inline convex meshes for the non-primitive shapes (no files needed)."""
    s = obj.size
    if obj.shape == "hex_prism":
        r, h = s["radius"], s["half_height"]
        v = [(r * math.cos(k * math.pi / 3), r * math.sin(k * math.pi / 3), z) for z in (-h, h) for k in range(6)]
    elif obj.shape == "tri_prism":
        r, h = s["side"] / math.sqrt(3), s["half_height"]
        v = [(r * math.cos(a), r * math.sin(a), z) for z in (-h, h)
             for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    elif obj.shape == "frustum":
        b, t, h = s["bottom"], s["top"], s["half_height"]
        v = [(sx * w, sy * w, z) for (w, z) in ((b, -h), (t, h)) for sx in (-1, 1) for sy in (-1, 1)]
    else:
        return ""
    return f'<mesh name="{obj.name}_mesh" vertex="{_fmt(np.ravel(v))}"/>\n'


def object_geoms(obj: ObjectSpec, config: SimConfig) -> str:
    """The MJCF geoms of one object (contact parameters from :func:`contact_friction`)."""
    s, rgba = obj.size, _fmt((*obj.rgb, 1.0))
    condim, fr = contact_friction(obj, config)
    common = (f'rgba="{rgba}" condim="{condim}" friction="{fr[0]:.4g} {fr[1]:.4g} {fr[2]:.4g}" '
              f'contype="1" conaffinity="1" solref="0.004 1"')
    if obj.shape == "box":
        return f'<geom type="box" size="{_fmt(s["half"])}" mass="{obj.mass:.5g}" {common}/>'
    if obj.shape == "cylinder":
        return f'<geom type="cylinder" size="{s["radius"]:.5g} {s["half_height"]:.5g}" mass="{obj.mass:.5g}" {common}/>'
    if obj.shape == "sphere":
        return f'<geom type="sphere" size="{s["radius"]:.5g}" mass="{obj.mass:.5g}" {common}/>'
    if obj.shape == "capsule":
        hl = s["half_length"]
        return f'<geom type="capsule" fromto="{-hl:.5g} 0 0 {hl:.5g} 0 0" size="{s["radius"]:.5g}" mass="{obj.mass:.5g}" {common}/>'
    if obj.shape == "ellipsoid":
        return f'<geom type="ellipsoid" size="{_fmt(s["axes"])}" mass="{obj.mass:.5g}" {common}/>'
    if obj.shape in ("hex_prism", "tri_prism", "frustum"):
        return f'<geom type="mesh" mesh="{obj.name}_mesh" mass="{obj.mass:.5g}" {common}/>'
    if obj.shape == "dumbbell":
        hl, rb, rs = s["half_length"], s["bar_radius"], s["end_radius"]
        return (f'<geom type="capsule" fromto="{-hl:.5g} 0 0 {hl:.5g} 0 0" size="{rb:.5g}" mass="{obj.mass * 0.4:.5g}" {common}/>'
                f'<geom type="sphere" pos="{-hl:.5g} 0 0" size="{rs:.5g}" mass="{obj.mass * 0.3:.5g}" {common}/>'
                f'<geom type="sphere" pos="{hl:.5g} 0 0" size="{rs:.5g}" mass="{obj.mass * 0.3:.5g}" {common}/>')
    raise ValueError(f"unknown shape {obj.shape!r}")


def head_camera_xml(scene: SceneSpec) -> str:
    """The fixed head camera, jittered by the scene's camera offset."""
    dx, dy, dz, dyaw, dpitch, droll = scene.head_cam_offset
    pos = HEAD_CAM_POS + np.array([dx, dy, dz])
    f = HEAD_CAM_LOOKAT - HEAD_CAM_POS
    yaw, pitch = math.atan2(f[1], f[0]) + dyaw, math.atan2(f[2], math.hypot(f[0], f[1])) + dpitch
    d = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    xy = look_at_xyaxes(pos, pos + d, np.array([0.0, 0.0, 1.0]), roll=droll)
    return f'<camera name="head_cam" pos="{_fmt(pos)}" xyaxes="{xy}" fovy="{HEAD_CAM_FOVY}"/>'


def build_mjcf(scene: SceneSpec, config: SimConfig) -> str:
    """Return the MJCF XML string of ``scene`` rendered at ``config``'s image size."""
    bg = scene.background
    h, w = config.image_height, config.image_width
    meshes = "".join(mesh_assets(o) for o in scene.objects)
    lights = "".join(
        f'<light directional="true" pos="0.4 0 2" dir="{_fmt(l.direction)}" diffuse="{_fmt(l.diffuse)}" '
        f'specular="0.1 0.1 0.1" castshadow="{"true" if config.shadows else "false"}"/>\n'
        for l in scene.lights)
    objects = "".join(
        f'<body name="{o.name}" pos="{_fmt(o.pos)}" quat="{_yaw_quat(o.yaw)}">'
        f'<freejoint name="{o.name}_free"/>{object_geoms(o, config)}</body>\n' for o in scene.objects)
    wrist_xy = look_at_xyaxes(WRIST_CAM_POS, WRIST_CAM_LOOKAT, np.array([0.0, 0.0, -1.0]))
    amb = scene.ambient
    return f"""<mujoco model="dexgrasp_scene_{scene.seed}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{config.physics_dt}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{max(w, 640)}" offheight="{max(h, 480)}"/>
    <headlight ambient="{amb:.3f} {amb:.3f} {amb:.3f}" diffuse="0.05 0.05 0.05" specular="0 0 0"/>
    <quality shadowsize="1024" offsamples="0"/>
  </visual>
  <asset>
    <texture name="table_tex" type="2d" builtin="{bg.texture}" rgb1="{_fmt(bg.rgb1)}" rgb2="{_fmt(bg.rgb2)}" width="128" height="128"/>
    <material name="table_mat" texture="table_tex" texrepeat="{bg.texrepeat} {bg.texrepeat}" specular="0.1"/>
    <material name="floor_mat" rgba="{_fmt((*bg.floor, 1))}"/>
    {meshes}
  </asset>
  <worldbody>
    {lights}
    <geom name="floor" type="plane" pos="0 0 -0.76" size="3 3 0.1" material="floor_mat" contype="0" conaffinity="0"/>
    {table_geom_xml(config)}
    {head_camera_xml(scene)}
    {robot_body_xml(wrist_xy, _fmt(WRIST_CAM_POS))}
    {objects}
  </worldbody>
  {robot_actuators_xml()}
</mujoco>
"""
