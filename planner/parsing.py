"""Strict, robust parsing of planner replies.

* JSON may be fenced (```json ... ```) or bare, possibly with text around it; broken JSON
  (single quotes, trailing commas, unquoted keys, a missing brace) is repaired with
  ``json-repair``.
* Booleans come only from an explicit verdict, read by ONE function, ``parse_verdict``: the
  JSON key the prompt asked for, a final line such as ``Verdict: False``, or a reply that is
  nothing but the verdict word (``Yes.``, ``**No**``). Text is never searched for the word
  "true"; an ambiguous or contradictory reply raises ``ReplyParseError`` (the client asks
  again) and never silently becomes ``False``.
* Boxes are converted to absolute pixels, checked, clamped to the image; boxes clearly outside
  the image and degenerate boxes are rejected.

All failures raise ``ReplyParseError`` with a message saying what was wrong.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, Optional, Sequence

import json_repair

from planner.types import BBox, BBoxFormat


class ReplyParseError(ValueError):
    """A reply could not be turned into a result (the client wraps it in ``PlannerError``)."""


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)```", re.DOTALL)
# Markdown emphasis, code ticks and quotes that may wrap a verdict word or label.
_WRAP = "\\s*_`\"'\u201c\u201d\u2018\u2019"
# A verdict word alone: "yes", "Yes.", "**No**", "`true`", "'FALSE'!" (not "yes?", "yes, but").
_VERDICT_TOKEN = re.compile(rf"^[{_WRAP}]*(true|false|yes|no)[{_WRAP}]*[.!]*[{_WRAP}]*$", re.IGNORECASE)
# Labels accepted on a final verdict line besides the verdict's own key ("Verdict: yes",
# "success: no"); another task's key is not one of them ("done: yes" is no grasp verdict).
_VERDICT_LABELS = ("verdict", "answer", "result", "decision", "conclusion")
_VERDICT_WORDS = {"true": True, "yes": True, "false": False, "no": False}


def extract_json(text: str) -> Any:
    """Return the JSON value (dict or list) in a reply, repairing it if needed.

    Raises ``ReplyParseError`` when the reply holds no JSON object or array.
    """
    if not isinstance(text, str) or not text.strip():
        raise ReplyParseError("empty reply")
    candidates: list[str] = []
    for match in _FENCE.finditer(text):
        candidates.append(match.group(2))
    stripped = text.strip()
    candidates.append(stripped)
    start = min((i for i in (stripped.find("{"), stripped.find("[")) if i >= 0), default=-1)
    if start > 0:
        candidates.append(stripped[start:])
    for candidate in candidates:
        candidate = candidate.strip()
        if not candidate or candidate[0] not in "{[":
            continue
        try:
            value = json.loads(candidate)
        except ValueError:
            value = None
        if isinstance(value, (dict, list)):
            return value
    for candidate in candidates:
        if "{" not in candidate and "[" not in candidate:
            continue
        try:
            value = json_repair.loads(candidate)
        except Exception:  # json-repair raises assorted errors on hopeless input
            continue
        if isinstance(value, (dict, list)) and value:
            return value
    raise ReplyParseError("no JSON object found in the reply")


def extract_object(text: str, required: Sequence[str] = ()) -> dict[str, Any]:
    """Return the first JSON object in a reply that has all ``required`` keys.

    A list of objects (as Qwen2.5-VL often writes for boxes) is searched in order.
    """
    value = extract_json(text)
    objects = [value] if isinstance(value, dict) else [v for v in value if isinstance(v, dict)]
    if not objects:
        raise ReplyParseError("the reply's JSON holds no object")
    for obj in objects:
        if all(key in obj for key in required):
            return obj
    missing = [key for key in required if key not in objects[0]]
    raise ReplyParseError(f"the reply's JSON lacks required key(s) {missing}")


def _verdict_token(value: Any) -> Optional[bool]:
    """``True``/``False`` for a JSON boolean or a lone verdict word, ``None`` for anything else.

    Accepted words: yes/no/true/false in any case, wrapped in markdown emphasis, backticks or
    quotes, optionally followed by ``.`` or ``!``. Numbers, ``null``, "maybe", "yes?" and words
    with more text around them are not verdicts.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = _VERDICT_TOKEN.match(value.strip())
        if match:
            return _VERDICT_WORDS[match.group(1).lower()]
    return None


def _verdict_line(line: str, key: str) -> Optional[bool]:
    """The verdict of a line such as ``Verdict: yes`` / ``**Final answer:** No.`` / ``- done = true``."""
    labels = "|".join(_VERDICT_LABELS + (re.escape(key), re.escape(key).replace("_", r"[\s_]")))
    match = re.match(
        rf"^[\s>#*_`\-]*(?:final\s+)?(?:{labels})[{_WRAP}]*[:=](?P<word>.+)$", line.strip(), re.IGNORECASE
    )
    return _verdict_token(match.group("word")) if match else None


def parse_verdict(text: str, key: str) -> tuple[bool, dict[str, Any]]:
    """Read an explicit boolean verdict -- the one verdict parser of the planner.

    Sources, all of which must agree when several are present:

    1. the JSON key ``key``: a JSON boolean, or a string such as ``"yes"``/``"False."``;
    2. the last non-empty line, when it is a verdict line (``Verdict: True``,
       ``**Final answer:** Yes.``, ``<key>: false`` such as ``done: no`` for ``key="done"``);
    3. when neither is present, a reply that is nothing but a verdict word (``Yes.``, ``**No**``).

    Returns ``(verdict, json_object_or_empty)``. Raises ``ReplyParseError`` when there is no
    verdict, when the key holds something else (``"maybe"``, ``1``, ``null``) or when the JSON
    key and the final line contradict each other. Never guesses, never defaults to ``False``.
    """
    obj: dict[str, Any] = {}
    try:
        obj = extract_object(text)
    except ReplyParseError:
        obj = {}
    found: list[tuple[str, bool]] = []
    if key in obj:
        verdict = _verdict_token(obj[key])
        if verdict is None:
            raise ReplyParseError(f"verdict key {key!r} is {obj[key]!r}, not a boolean")
        found.append((f"JSON key {key!r}", verdict))
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if lines:
        verdict = _verdict_line(lines[-1], key)
        if verdict is not None:
            found.append(("the final line", verdict))
    if not found:
        verdict = _verdict_token(text or "")
        if verdict is not None:
            found.append(("the whole reply", verdict))
    if not found:
        raise ReplyParseError(
            f"no explicit verdict: expected JSON key {key!r}, a final 'Verdict: true/false' line or a bare yes/no"
        )
    if len({verdict for _, verdict in found}) > 1:
        detail = ", ".join(f"{where} says {verdict}" for where, verdict in found)
        raise ReplyParseError(f"contradictory verdicts: {detail}")
    return found[0][1], obj


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ReplyParseError(f"box coordinate {value!r} is not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError as exc:
            raise ReplyParseError(f"box coordinate {value!r} is not a number") from exc
    else:
        raise ReplyParseError(f"box coordinate {value!r} is not a number")
    if not math.isfinite(number):
        raise ReplyParseError(f"box coordinate {value!r} is not finite")
    return number


def parse_box(
    value: Any,
    fmt: BBoxFormat,
    width: int,
    height: int,
    tolerance: float = 0.1,
    min_size: int = 2,
) -> tuple[BBox, tuple[float, float, float, float]]:
    """Validate a ``[x1, y1, x2, y2]`` box and convert it to a clamped absolute-pixel ``BBox``.

    Args:
        value: the box as the model wrote it (a list of 4 numbers, or a dict x1..y2).
        fmt: the coordinate convention the prompt asked for.
        width, height: size of the image that was sent.
        tolerance: fraction of the image size a coordinate may overshoot and still be clamped;
            further out, the box is rejected (it usually means a wrong convention).
        min_size: minimum width and height in pixels after clamping.

    Returns ``(bbox, raw_coordinates)``.
    """
    if isinstance(value, Mapping) and all(k in value for k in ("x1", "y1", "x2", "y2")):
        value = [value["x1"], value["y1"], value["x2"], value["y2"]]
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ReplyParseError(f"bbox_2d must be a list of 4 numbers, got {value!r}")
    x1, y1, x2, y2 = (_number(v) for v in value)
    raw = (x1, y1, x2, y2)
    if fmt is BBoxFormat.NORMALIZED_1000:
        x1, x2 = x1 * width / 1000.0, x2 * width / 1000.0
        y1, y2 = y1 * height / 1000.0, y2 * height / 1000.0
    if x2 <= x1 or y2 <= y1:
        raise ReplyParseError(f"degenerate box {list(raw)}: need x1 < x2 and y1 < y2")
    tol_x, tol_y = tolerance * width, tolerance * height
    if x1 < -tol_x or y1 < -tol_y or x2 > width + tol_x or y2 > height + tol_y:
        raise ReplyParseError(
            f"box {list(raw)} lies outside the {width}x{height} image ({fmt.value} coordinates)"
        )
    cx1 = int(round(min(max(x1, 0.0), width)))
    cy1 = int(round(min(max(y1, 0.0), height)))
    cx2 = int(round(min(max(x2, 0.0), width)))
    cy2 = int(round(min(max(y2, 0.0), height)))
    if cx2 - cx1 < min_size or cy2 - cy1 < min_size:
        raise ReplyParseError(
            f"box {list(raw)} is degenerate inside the {width}x{height} image "
            f"(smaller than {min_size} px after clamping)"
        )
    return BBox(cx1, cy1, cx2, cy2), raw


def string_field(obj: Mapping[str, Any], key: str, required: bool = True) -> str:
    """Return ``obj[key]`` as a stripped string; ``ReplyParseError`` if required and missing/empty."""
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ReplyParseError(f"key {key!r} is missing or empty")
        return ""
    if isinstance(value, (dict, list)):
        if required:
            raise ReplyParseError(f"key {key!r} must be a string, got {type(value).__name__}")
        return json.dumps(value)
    return str(value).strip()


def string_list(obj: Mapping[str, Any], key: str) -> list[str]:
    """Return ``obj[key]`` as a list of non-empty strings (a single string becomes a 1-list)."""
    value = obj.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ReplyParseError(f"key {key!r} must be a list of strings")
    return [str(v).strip() for v in value if str(v).strip()]
