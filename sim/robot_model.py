"""The simulated robot: a 7-DoF arm with the RM75 joint limits and a 6-actuator dexterous hand.

Built from primitives only (capsules, boxes) so it renders fast in software. The arm links are
gravity-compensated position servos and do not collide; the hand (palm, four two-link fingers, a
thumb with a rotation and a bend joint, distal joints tied to proximal ones by equality
constraints) collides with the table and the objects.

Hand commands are normalised like the real hand: 1 = open, 0 = closed, in the order of
:data:`inference_utils.robot_spec.HAND_DOF_NAMES`; :data:`HAND_CLOSED_RAD` / :data:`HAND_OPEN_RAD`
map them to joint angles.
"""
from __future__ import annotations

import numpy as np

from inference_utils.robot_spec import ARM_LOWER, ARM_UPPER, HAND_DOF_NAMES

ARM_JOINTS = tuple(f"arm_j{i}" for i in range(1, 8))
HAND_JOINTS = ("little_prox", "ring_prox", "middle_prox", "index_prox", "thumb_bend", "thumb_rot")
assert len(HAND_JOINTS) == len(HAND_DOF_NAMES)
#: Joint angle (rad) at hand value 0 (closed) and 1 (open), per hand DOF.
HAND_CLOSED_RAD = np.array([1.45, 1.45, 1.45, 1.45, 1.35, 0.0])
HAND_OPEN_RAD = np.array([-0.15, -0.15, -0.15, -0.15, -0.15, 0.7])
#: Distal joint = DISTAL_RATIO * proximal joint (coupled like tendon-driven hands).
DISTAL_RATIO = 0.8

# geometry (metres)
BASE_H, LINK1, UPPER, FORE, WRIST = 0.10, 0.15, 0.38, 0.34, 0.09
PALM_HALF = (0.05, 0.045, 0.02)
FINGER_X, THUMB_X = 0.04, -0.045
FINGER_YS = {"little": -0.033, "ring": -0.011, "middle": 0.011, "index": 0.033}
PROX_LEN, DIST_LEN, FINGER_R = 0.05, 0.042, 0.0095
#: Grasp point in the hand frame: between fingers and thumb, around the distal links.
GRASP_SITE = (-0.0025, 0.0, 2 * PALM_HALF[2] + 0.062)

ARM_COLLISION = 'contype="0" conaffinity="0"'
HAND_COLLISION = 'contype="2" conaffinity="1" condim="4" friction="1.3 0.02 0.001" solref="0.005 1"'


def hand_to_rad(values: np.ndarray) -> np.ndarray:
    """Normalised hand commands (6,) in [0, 1] -> actuated joint angles (rad)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return HAND_CLOSED_RAD + v * (HAND_OPEN_RAD - HAND_CLOSED_RAD)


def rad_to_hand(q: np.ndarray) -> np.ndarray:
    """Actuated hand joint angles (rad) -> normalised values clipped to [0, 1]."""
    v = (np.asarray(q, dtype=np.float64) - HAND_CLOSED_RAD) / (HAND_OPEN_RAD - HAND_CLOSED_RAD)
    return np.clip(v, 0.0, 1.0)


def _finger(name: str, x: float, y: float, axis: str, z0: float) -> str:
    """MJCF for one two-link finger hanging along the hand's +z axis."""
    return f"""
        <body name="{name}_prox_link" pos="{x} {y} {z0}" gravcomp="1">
          <joint name="{name}_prox" type="hinge" axis="{axis}" range="-0.2 1.6" damping="0.02" armature="0.001"/>
          <geom type="capsule" fromto="0 0 0 0 0 {PROX_LEN}" size="{FINGER_R}" mass="0.02" rgba="0.2 0.2 0.22 1" {HAND_COLLISION}/>
          <body name="{name}_dist_link" pos="0 0 {PROX_LEN}" gravcomp="1">
            <joint name="{name}_dist" type="hinge" axis="{axis}" range="-0.2 1.5" damping="0.02" armature="0.001"/>
            <geom type="capsule" fromto="0 0 0 0 0 {DIST_LEN}" size="{FINGER_R * 0.95:.5f}" mass="0.015" rgba="0.85 0.85 0.85 1" {HAND_COLLISION}/>
            <site name="{name}_tip" pos="0 0 {DIST_LEN}" size="0.005"/>
          </body>
        </body>"""


def robot_body_xml(wrist_cam_xyaxes: str, wrist_cam_pos: str) -> str:
    """MJCF ``<body>`` tree of the arm and hand, rooted at the world origin on the table."""
    palm_z = PALM_HALF[2]
    z0 = 2 * palm_z
    fingers = "".join(_finger(n, FINGER_X, y, "0 -1 0", z0) for n, y in FINGER_YS.items())
    lim = [f"{lo:.4f} {hi:.4f}" for lo, hi in zip(ARM_LOWER, ARM_UPPER)]
    arm_c = 'rgba="0.75 0.77 0.8 1" ' + ARM_COLLISION
    return f"""
    <body name="robot_base" pos="0 0 0">
      <geom type="cylinder" pos="0 0 {BASE_H / 2}" size="0.08 {BASE_H / 2}" rgba="0.3 0.3 0.33 1" {ARM_COLLISION}/>
      <body name="link1" pos="0 0 {BASE_H}" gravcomp="1">
        <joint name="arm_j1" axis="0 0 1" range="{lim[0]}" damping="60" armature="0.1"/>
        <geom type="capsule" fromto="0 0 0 0 0 {LINK1}" size="0.055" mass="2" {arm_c}/>
        <body name="link2" pos="0 0 {LINK1}" gravcomp="1">
          <joint name="arm_j2" axis="0 1 0" range="{lim[1]}" damping="60" armature="0.1"/>
          <geom type="sphere" size="0.055" mass="1" {arm_c}/>
          <body name="link3" pos="0 0 0" gravcomp="1">
            <joint name="arm_j3" axis="0 0 1" range="{lim[2]}" damping="40" armature="0.05"/>
            <geom type="capsule" fromto="0 0 0 0 0 {UPPER}" size="0.045" mass="2" {arm_c}/>
            <body name="link4" pos="0 0 {UPPER}" gravcomp="1">
              <joint name="arm_j4" axis="0 1 0" range="{lim[3]}" damping="40" armature="0.05"/>
              <geom type="sphere" size="0.045" mass="0.8" {arm_c}/>
              <body name="link5" pos="0 0 0" gravcomp="1">
                <joint name="arm_j5" axis="0 0 1" range="{lim[4]}" damping="20" armature="0.03"/>
                <geom type="capsule" fromto="0 0 0 0 0 {FORE}" size="0.038" mass="1.5" {arm_c}/>
                <body name="link6" pos="0 0 {FORE}" gravcomp="1">
                  <joint name="arm_j6" axis="0 1 0" range="{lim[5]}" damping="20" armature="0.03"/>
                  <geom type="sphere" size="0.038" mass="0.5" {arm_c}/>
                  <body name="link7" pos="0 0 0" gravcomp="1">
                    <joint name="arm_j7" axis="0 0 1" range="{lim[6]}" damping="10" armature="0.02"/>
                    <geom type="cylinder" fromto="0 0 0 0 0 {WRIST - 0.005}" size="0.035" mass="0.4" rgba="0.25 0.25 0.28 1" {ARM_COLLISION}/>
                    <body name="hand" pos="0 0 {WRIST}" gravcomp="1">
                      <geom name="palm" type="box" pos="0 0 {palm_z}" size="{PALM_HALF[0]} {PALM_HALF[1]} {palm_z}" mass="0.3" rgba="0.15 0.15 0.17 1" {HAND_COLLISION}/>
                      <site name="grasp" pos="{GRASP_SITE[0]} {GRASP_SITE[1]} {GRASP_SITE[2]}" size="0.006" rgba="1 0 0 0"/>
                      <site name="palm_bottom" pos="0 0 {z0}" size="0.004" rgba="0 0 0 0"/>
                      <camera name="wrist_cam" pos="{wrist_cam_pos}" xyaxes="{wrist_cam_xyaxes}" fovy="80"/>
                      {fingers}
                      <body name="thumb_base" pos="{THUMB_X} 0.008 {z0}" gravcomp="1">
                        <joint name="thumb_rot" type="hinge" axis="0 0 1" range="-0.1 0.8" damping="0.05" armature="0.002"/>
                        <geom type="sphere" size="0.012" mass="0.02" rgba="0.2 0.2 0.22 1" {HAND_COLLISION}/>
                        <body name="thumb_prox_link" pos="0 0 0" gravcomp="1">
                          <joint name="thumb_bend" type="hinge" axis="0 1 0" range="-0.2 1.6" damping="0.02" armature="0.001"/>
                          <geom type="capsule" fromto="0 0 0 0 0 {PROX_LEN}" size="{FINGER_R * 1.1:.5f}" mass="0.025" rgba="0.2 0.2 0.22 1" {HAND_COLLISION}/>
                          <body name="thumb_dist_link" pos="0 0 {PROX_LEN}" gravcomp="1">
                            <joint name="thumb_dist" type="hinge" axis="0 1 0" range="-0.2 1.5" damping="0.02" armature="0.001"/>
                            <geom type="capsule" fromto="0 0 0 0 0 {DIST_LEN}" size="{FINGER_R * 1.05:.5f}" mass="0.02" rgba="0.85 0.85 0.85 1" {HAND_COLLISION}/>
                            <site name="thumb_tip" pos="0 0 {DIST_LEN}" size="0.005"/>
                          </body>
                        </body>
                      </body>
                    </body>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>"""


def robot_actuators_xml() -> str:
    """``<actuator>`` and ``<equality>`` sections for the arm servos and the hand."""
    arm = "".join(
        f'<position name="act_{j}" joint="{j}" kp="{kp}" ctrlrange="{lo:.4f} {hi:.4f}" forcerange="-300 300"/>\n'
        for j, kp, lo, hi in zip(ARM_JOINTS, (2500, 2500, 1800, 1800, 800, 800, 400), ARM_LOWER, ARM_UPPER))
    hand = ""
    for j in HAND_JOINTS:
        kp, fr = {"thumb_bend": (6.0, 1.6), "thumb_rot": (6.0, 1.5)}.get(j, (3.0, 0.45))
        hand += f'<position name="act_{j}" joint="{j}" kp="{kp}" ctrlrange="-0.2 1.6" forcerange="-{fr} {fr}"/>\n'
    eq = "".join(
        f'<joint joint1="{f}_dist" joint2="{f}_prox" polycoef="0 {DISTAL_RATIO} 0 0 0" solref="0.005 1"/>\n'
        for f in ("little", "ring", "middle", "index"))
    eq += f'<joint joint1="thumb_dist" joint2="thumb_bend" polycoef="0 {DISTAL_RATIO} 0 0 0" solref="0.005 1"/>\n'
    return f"<actuator>\n{arm}{hand}</actuator>\n<equality>\n{eq}</equality>"


#: Home arm pose (rad): hand pointing down ~0.3 m above the table centre, closing axis along -x.
HOME_ARM_Q = np.array([0.0, 0.3431, 0.0, 1.5754, 0.0, 1.2231, 0.0])
#: Hand values at home (fully open, thumb rotated away).
HOME_HAND = np.ones(6)
