"""Shared command-line conventions of every DexGraspVLA CLI (light: imports nothing heavy).

* One flag style: ``--kebab-case``. :class:`ArgumentParser` still accepts the old underscore
  spellings (``--save_deployment_data``, ``--non_interactive``, ``--attn_maps_dir`` ...) of its
  own long options: each is rewritten to the kebab-case spelling, with a
  :class:`DeprecationWarning` and a note on stderr naming the new spelling.
* ``--device auto`` (the default wherever a CLI takes ``--device``): :func:`resolve_device`
  picks ``cuda``, then ``mps``, then ``cpu``. torch is imported only when the device is resolved,
  after the arguments were parsed, so ``--help`` stays fast.

Usage::

    from inference_utils.cli_common import ArgumentParser, add_device_argument, resolve_device
    p = ArgumentParser(prog="python -m sim.evaluate")
    p.add_argument("--time-limit", type=float)
    add_device_argument(p)
    args = p.parse_args()          # --time_limit 5 works too, with a deprecation note
    device = resolve_device(args.device)
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any, Callable, Iterable, Optional, Sequence

DEVICE_CHOICES_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"


def deprecated_flag_note(old: str, new: str, prog: Optional[str] = None) -> str:
    """The deprecation message for ``old`` (e.g. ``--non_interactive``)."""
    head = f"{prog}: " if prog else ""
    return f"{head}{old} is deprecated, use {new} (flags are kebab-case)"


def normalize_flags(argv: Sequence[str], known: Iterable[str], prog: Optional[str] = None,
                    stream=None) -> list[str]:
    """Rewrite old underscore spellings of the long options in ``known`` to kebab-case.

    ``--save_deployment_data`` -> ``--save-deployment-data`` (also ``--out_dir=DIR``), only when
    the kebab-case spelling is one of ``known``; everything after ``--`` and every other argument
    (values, Hydra overrides ``key=value``) is left alone. Each rewrite warns once (a
    :class:`DeprecationWarning` and a line on ``stream``, default stderr).
    """
    known = set(known)
    out: list[str] = []
    passthrough = False
    for arg in argv:
        if passthrough or not isinstance(arg, str) or not arg.startswith("--") or arg == "--":
            passthrough = passthrough or arg == "--"
            out.append(arg)
            continue
        name, sep, value = arg.partition("=")
        if "_" in name:
            kebab = "--" + name[2:].replace("_", "-")
            if kebab in known and kebab != name:
                note = deprecated_flag_note(name, kebab, prog)
                print(f"warning: {note}", file=stream or sys.stderr)
                warnings.warn(note, DeprecationWarning, stacklevel=3)
                arg = kebab + sep + value
        out.append(arg)
    return out


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that accepts the old underscore spellings of its long options."""

    def _long_options(self) -> set[str]:
        return {o for action in self._actions for o in action.option_strings if o.startswith("--")}

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse's
        argv = sys.argv[1:] if args is None else list(args)
        argv = normalize_flags(argv, self._long_options(), self.prog)
        return super().parse_known_args(argv, namespace)


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto", **kwargs) -> None:
    """``--device`` (default ``auto``), resolved later with :func:`resolve_device`."""
    parser.add_argument("--device", default=default, help=kwargs.pop("help", f"torch device: {DEVICE_CHOICES_HELP}"
                                                                              f" (default {default})"), **kwargs)


def resolve_device(name: Optional[str] = "auto") -> str:
    """``auto`` -> ``cuda`` if available, else ``mps`` if available, else ``cpu``; other names unchanged.

    Imports torch only for ``auto`` (a machine without torch resolves to ``cpu``).
    """
    name = (name or "auto").strip()
    if name.lower() != "auto":
        return name
    try:
        import torch  # noqa: PLC0415 - only when a device is actually resolved
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse ``type`` accepting only values of ``kind`` (int, float) above zero."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse
