"""Per-dimension affine normaliser stored with the model (``y = x * scale + offset``).

The state-dict layout matches the reference implementation exactly, so reference checkpoints load
and ours are readable by it::

    params_dict.<field>.scale                 (D,)
    params_dict.<field>.offset                (D,)
    params_dict.<field>.input_stats.min|max|mean|std   (D,)

All entries are ``nn.Parameter(requires_grad=False)`` inside nested ``nn.ParameterDict`` s, so they
follow the module across ``.to(device)`` and are saved in ``state_dict()``. ``load_state_dict`` on an
empty normaliser creates the fields from the keys it is given.

Modes (``fit``): ``limits`` maps each dimension's [min, max] to [output_min, output_max]; a
dimension whose range is below ``range_eps`` is only shifted so its value lands at the middle of the
output range. ``gaussian`` maps to zero mean and unit std (constant dims are only centred).

Inputs may be torch tensors (any device, any float dtype: computed in float32 or float64 on the
input's device, returned in the input's dtype) or numpy arrays (returned as numpy arrays).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Union

import numpy as np
import torch
import torch.nn as nn

ArrayLike = Union[torch.Tensor, np.ndarray]
STAT_NAMES = ("min", "max", "mean", "std")


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(t).detach().clone(), requires_grad=False)


def _make_field(scale: torch.Tensor, offset: torch.Tensor, stats: Mapping[str, torch.Tensor]) -> nn.ParameterDict:
    """Nested ParameterDict {'scale', 'offset', 'input_stats': {min, max, mean, std}}."""
    return nn.ParameterDict({
        "scale": _param(scale),
        "offset": _param(offset),
        "input_stats": nn.ParameterDict({k: _param(stats[k]) for k in STAT_NAMES if k in stats}),
    })


def _to_tensor_2d(data: Any, last_n_dims: int) -> torch.Tensor:
    """Any array-like -> float64 tensor (N, D) with D the product of the last ``last_n_dims`` dims."""
    if isinstance(data, torch.Tensor):
        t = data.detach().to("cpu", torch.float64)
    else:
        t = torch.from_numpy(np.asarray(data, dtype=np.float64))
    if t.numel() == 0:
        raise ValueError("cannot fit a normaliser on empty data")
    d = int(np.prod(t.shape[t.ndim - last_n_dims:])) if last_n_dims > 0 else 1
    return t.reshape(-1, d)  # (N, D)


@torch.no_grad()
def fit_field(data: Any, mode: str = "limits", output_max: float = 1.0, output_min: float = -1.0,
              range_eps: float = 1e-4, last_n_dims: int = 1, dtype: torch.dtype = torch.float32,
              fit_offset: bool = True) -> nn.ParameterDict:
    """Fit scale/offset for one field from data (..., D); statistics are computed in float64."""
    if mode not in ("limits", "gaussian"):
        raise ValueError(f"unknown normaliser mode {mode!r}; expected 'limits' or 'gaussian'")
    if not output_max > output_min:
        raise ValueError(f"output_max ({output_max}) must exceed output_min ({output_min})")
    x = _to_tensor_2d(data, last_n_dims)                          # (N, D)
    if not torch.isfinite(x).all():
        raise ValueError("cannot fit a normaliser on data containing NaN/inf")
    lo, hi = x.min(dim=0).values, x.max(dim=0).values             # (D,)
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=True) if x.shape[0] > 1 else torch.zeros_like(mean)
    if mode == "limits":
        if fit_offset:
            rng = hi - lo
            const = rng < range_eps
            rng = torch.where(const, torch.full_like(rng, output_max - output_min), rng)
            scale = (output_max - output_min) / rng
            offset = torch.where(const, (output_max + output_min) / 2 - lo, output_min - scale * lo)
        else:  # data already centred at zero: scale by the largest magnitude only
            out_abs = min(abs(output_min), abs(output_max))
            in_abs = torch.maximum(lo.abs(), hi.abs())
            in_abs = torch.where(in_abs < range_eps, torch.full_like(in_abs, out_abs), in_abs)
            scale, offset = out_abs / in_abs, torch.zeros_like(mean)
    else:
        safe_std = torch.where(std < range_eps, torch.ones_like(std), std)
        scale = 1.0 / safe_std
        offset = -mean * scale if fit_offset else torch.zeros_like(mean)
    stats = {"min": lo, "max": hi, "mean": mean, "std": std}
    return _make_field(scale.to(dtype), offset.to(dtype), {k: v.to(dtype) for k, v in stats.items()})


def _apply(x: ArrayLike, field: nn.ParameterDict, forward: bool) -> ArrayLike:
    """x (..., D) -> x * scale + offset (forward) or (x - offset) / scale, type-preserving."""
    is_numpy = not isinstance(x, torch.Tensor)
    t = torch.from_numpy(np.asarray(x)) if is_numpy else x
    out_dtype = t.dtype if t.is_floating_point() else torch.float32
    calc = torch.float64 if t.dtype == torch.float64 else torch.float32
    scale = field["scale"].to(device=t.device, dtype=calc)       # (D,)
    offset = field["offset"].to(device=t.device, dtype=calc)     # (D,)
    d = scale.shape[0]
    suffix_products = np.cumprod([1] + list(t.shape[::-1]))      # products of trailing dims
    if d != 1 and d not in suffix_products:
        raise ValueError(f"normaliser expects (..., {d}) input, got shape {tuple(t.shape)}")
    src_shape = t.shape
    v = t.to(calc).reshape(-1, d)                                # (N, D)
    v = v * scale + offset if forward else (v - offset) / scale
    v = v.reshape(src_shape).to(out_dtype)
    return v.cpu().numpy() if is_numpy else v


class SingleFieldLinearNormalizer(nn.Module):
    """Normaliser for one field; shares its parameters with the parent :class:`LinearNormalizer`."""

    def __init__(self, params_dict: nn.ParameterDict | None = None):
        super().__init__()
        self.params_dict = params_dict if params_dict is not None else nn.ParameterDict()

    @classmethod
    def create_fit(cls, data: Any, **kwargs: Any) -> "SingleFieldLinearNormalizer":
        return cls(fit_field(data, **kwargs))

    @classmethod
    def create_manual(cls, scale: ArrayLike, offset: ArrayLike,
                      input_stats_dict: Mapping[str, ArrayLike]) -> "SingleFieldLinearNormalizer":
        def tt(v: ArrayLike) -> torch.Tensor:
            return torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).flatten()
        return cls(_make_field(tt(scale), tt(offset), {k: tt(v) for k, v in input_stats_dict.items()}))

    @classmethod
    def create_identity(cls, dim: int = 1, dtype: torch.dtype = torch.float32) -> "SingleFieldLinearNormalizer":
        ones, zeros = torch.ones(dim, dtype=dtype), torch.zeros(dim, dtype=dtype)
        return cls(_make_field(ones, zeros, {"min": -ones, "max": ones, "mean": zeros, "std": ones}))

    def normalize(self, x: ArrayLike) -> ArrayLike:
        return _apply(x, self.params_dict, forward=True)

    def unnormalize(self, x: ArrayLike) -> ArrayLike:
        return _apply(x, self.params_dict, forward=False)

    def forward(self, x: ArrayLike) -> ArrayLike:
        return self.normalize(x)

    def get_input_stats(self) -> nn.ParameterDict:
        return self.params_dict["input_stats"]


class LinearNormalizer(nn.Module):
    """Dictionary of per-field affine normalisers (see module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.params_dict = nn.ParameterDict()

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, data: Union[Mapping[str, Any], ArrayLike], mode: str = "limits", output_max: float = 1.0,
            output_min: float = -1.0, range_eps: float = 1e-4, last_n_dims: int = 1,
            dtype: torch.dtype = torch.float32, fit_offset: bool = True) -> "LinearNormalizer":
        """Fit one field per key of ``data`` (or field ``'_default'`` for a single array)."""
        kw = dict(mode=mode, output_max=output_max, output_min=output_min, range_eps=range_eps,
                  last_n_dims=last_n_dims, dtype=dtype, fit_offset=fit_offset)
        items = data.items() if isinstance(data, Mapping) else [("_default", data)]
        for key, value in items:
            try:
                self.params_dict[str(key)] = fit_field(value, **kw)
            except ValueError as exc:
                raise ValueError(f"normaliser field '{key}': {exc}") from exc
        return self

    # ------------------------------------------------------------------ access
    def keys(self) -> list[str]:
        return list(self.params_dict.keys())

    def __contains__(self, key: str) -> bool:
        return key in self.params_dict

    def _field(self, key: str) -> nn.ParameterDict:
        if key not in self.params_dict:
            raise KeyError(f"normaliser has no field '{key}' (fitted fields: {self.keys()})")
        return self.params_dict[key]

    def __getitem__(self, key: str) -> SingleFieldLinearNormalizer:
        return SingleFieldLinearNormalizer(self._field(key))

    def __setitem__(self, key: str, value: SingleFieldLinearNormalizer) -> None:
        self.params_dict[key] = value.params_dict

    # ------------------------------------------------------------------ transforms
    def _map(self, x: Union[Mapping[str, ArrayLike], ArrayLike], forward: bool) -> Any:
        if isinstance(x, Mapping):
            return {k: _apply(v, self._field(k), forward) for k, v in x.items()}
        return _apply(x, self._field("_default"), forward)

    def normalize(self, x: Union[Mapping[str, ArrayLike], ArrayLike]) -> Any:
        """Dict of fields (each (..., D)) or a single array for the '_default' field."""
        return self._map(x, forward=True)

    def unnormalize(self, x: Union[Mapping[str, ArrayLike], ArrayLike]) -> Any:
        return self._map(x, forward=False)

    def forward(self, x: Union[Mapping[str, ArrayLike], ArrayLike]) -> Any:
        return self.normalize(x)

    def get_input_stats(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return {k: dict(f["input_stats"].items()) for k, f in self.params_dict.items()}

    def get_output_stats(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """Input statistics mapped through the normaliser (min/max land in the output range)."""
        return {k: {n: _apply(v, self.params_dict[k], True) for n, v in f["input_stats"].items()}
                for k, f in self.params_dict.items()}

    # ------------------------------------------------------------------ (de)serialisation
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Rebuild ``params_dict`` from whatever fields the state dict holds (works when empty)."""
        root = prefix + "params_dict."
        fields: Dict[str, Dict[str, Any]] = {}
        for key, value in state_dict.items():
            if not key.startswith(root):
                continue
            parts = key[len(root):].split(".")
            if len(parts) == 2 and parts[1] in ("scale", "offset"):
                fields.setdefault(parts[0], {})[parts[1]] = value
            elif len(parts) == 3 and parts[1] == "input_stats":
                fields.setdefault(parts[0], {}).setdefault("input_stats", {})[parts[2]] = value
            else:
                unexpected_keys.append(key)
        new = nn.ParameterDict()
        for name, f in fields.items():
            if "scale" not in f or "offset" not in f:
                error_msgs.append(f"normaliser field '{name}' lacks scale/offset in the state dict")
                continue
            new[name] = _make_field(f["scale"], f["offset"], f.get("input_stats", {}))
        device = next((p.device for p in self.parameters()), None)
        self.params_dict = new.to(device) if device is not None else new
        self.params_dict.requires_grad_(False)

    def to_dict(self, flat: bool = False) -> Dict[str, Any]:
        """Plain numpy copy: nested ``{field: {scale, offset, input_stats: {...}}}`` or, with
        ``flat``, ``{"field.scale": ..., "field.input_stats.min": ...}`` (safetensors-friendly)."""
        nested = {
            k: {"scale": f["scale"].detach().cpu().numpy().copy(),
                "offset": f["offset"].detach().cpu().numpy().copy(),
                "input_stats": {n: v.detach().cpu().numpy().copy() for n, v in f["input_stats"].items()}}
            for k, f in self.params_dict.items()}
        if not flat:
            return nested
        out = {}
        for k, f in nested.items():
            out[f"{k}.scale"], out[f"{k}.offset"] = f["scale"], f["offset"]
            out.update({f"{k}.input_stats.{n}": v for n, v in f["input_stats"].items()})
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LinearNormalizer":
        """Inverse of :meth:`to_dict` (nested or flat; values may be lists, arrays or tensors)."""
        def tt(v: Any) -> torch.Tensor:
            return v.detach().clone() if isinstance(v, torch.Tensor) else torch.from_numpy(
                np.array(v, dtype=np.float32))
        if any("." in k for k in d):  # flat -> nested
            nested: Dict[str, Any] = {}
            for k, v in d.items():
                parts = k.split(".")
                node = nested.setdefault(parts[0], {})
                for p in parts[1:-1]:
                    node = node.setdefault(p, {})
                node[parts[-1]] = v
            d = nested
        norm = cls()
        for name, f in d.items():
            stats = {n: tt(v) for n, v in dict(f.get("input_stats", {})).items()}
            norm.params_dict[name] = _make_field(tt(f["scale"]), tt(f["offset"]), stats)
        return norm
