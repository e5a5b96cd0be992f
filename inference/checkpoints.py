"""Loading the published EchoNet-Dynamic checkpoints and the shipped fp16 demo weights.

Two formats, two jobs:

* EchoNet-Dynamic's ``.pt`` files: ``torch.save({"epoch", "state_dict", "opt_dict", ...})`` of a
  ``DataParallel``-wrapped model, so every key carries a ``module.`` prefix. They are opened with
  ``weights_only=True`` because a pickle from the internet must not be able to run code.
* Our demo weights: safetensors in float16 (half the repository size, no pickle at all) with the
  build configuration (architecture, width, normalisation) stored in the file's metadata, so a
  model can be rebuilt from the file alone.

Every way a file can fail to fit the model is reported as :class:`CheckpointError`, naming the
offending keys, before any tensor is copied: a half-loaded model is worse than none.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from inference.errors import InferenceError

DATA_PARALLEL_PREFIX = "module."
CONFIG_METADATA_KEY = "echo_agent_config"
# A BatchNorm counter only drives momentum=None averaging; files from before it existed (or that
# dropped it) are still complete models, so its absence is filled in rather than refused.
OPTIONAL_SUFFIX = "num_batches_tracked"
_MAX_KEYS_IN_MESSAGE = 8
_FP16_MAX = torch.finfo(torch.float16).max

PathLike = str | os.PathLike[str]


class CheckpointError(InferenceError, ValueError):
    """A checkpoint file is unreadable or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What was loaded, for the log and the audit trail."""

    path: str
    epoch: int | None
    best_loss: float | None
    tensor_count: int


def load_echonet_checkpoint(path: PathLike, model: nn.Module) -> CheckpointInfo:
    """Load an EchoNet-Dynamic checkpoint (or a bare state_dict) into ``model``, strictly.

    The ``module.`` prefix is stripped when every key carries it, so both DataParallel and plain
    torchvision state_dicts load. Tensors are copied into the model's own dtype and device.
    """
    try:
        payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except OSError:
        raise  # a missing or unreadable file is not a format problem
    except Exception as exc:  # untrusted input: any unpickling failure means "not a checkpoint"
        raise CheckpointError(
            f"{path}: not a loadable weights-only torch checkpoint: {exc}"
        ) from exc
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(payload).__name__}")

    if "state_dict" in payload:
        state = payload["state_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict")
    else:
        state = payload
    state = strip_data_parallel_prefix(state)
    _load_checked(model, state, str(path))
    return CheckpointInfo(
        path=str(path),
        epoch=_optional_int(payload.get("epoch")),
        best_loss=_optional_float(payload.get("best_loss")),
        tensor_count=len(state),
    )


def strip_data_parallel_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``module.`` from every key, but only if all keys have it (a partial prefix is a bug)."""
    keys = list(state)
    if keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in keys):
        return {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in state.items()}
    return dict(state)


def save_safetensors_fp16(model: nn.Module, path: PathLike, config: Mapping[str, Any]) -> None:
    """Write ``model``'s state_dict as float16 safetensors with ``config`` as JSON metadata.

    ``config`` should hold what is needed to rebuild and feed the model (architecture, width,
    normalisation mean/std); it must be JSON-serialisable. Integer buffers keep their dtype.
    Refuses to write a value that float16 cannot hold rather than ship an ``inf``.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        if t.is_floating_point():
            finite_max = t[torch.isfinite(t)].abs().max().item() if t.numel() else 0.0
            if finite_max > _FP16_MAX:
                raise CheckpointError(
                    f"{name}: value {finite_max:.4g} overflows float16 (max {_FP16_MAX:.4g})"
                )
            t = t.to(torch.float16)
        tensors[name] = t.contiguous().clone()
    metadata = {CONFIG_METADATA_KEY: json.dumps(dict(config), sort_keys=True), "format": "pt"}
    save_file(tensors, os.fspath(path), metadata=metadata)


def read_safetensors_config(path: PathLike) -> dict[str, Any]:
    """The build configuration stored by :func:`save_safetensors_fp16`, without the tensors."""
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    raw = metadata.get(CONFIG_METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: no '{CONFIG_METADATA_KEY}' entry in the metadata")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: config metadata is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config metadata is a {type(config).__name__}, not a dict")
    return config


def load_safetensors(path: PathLike, model: nn.Module) -> dict[str, Any]:
    """Load demo weights into ``model`` (strict, cast to the model's dtype); return the config."""
    config = read_safetensors_config(path)
    try:
        state = load_file(os.fspath(path), device="cpu")
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    _load_checked(model, state, str(path))
    return config


def _load_checked(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Compare names and shapes with the model first, then load with ``strict=True``."""
    expected = model.state_dict()
    state = dict(state)
    for name in expected.keys() - state.keys():
        if name.endswith(OPTIONAL_SUFFIX):
            state[name] = expected[name].clone()

    problems: list[str] = []
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [
        f"{k} (file {list(state[k].shape)}, model {list(t.shape)})"
        for k, t in expected.items()
        if isinstance(state.get(k), torch.Tensor) and state[k].shape != t.shape
    ]
    for label, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
        ("non-tensor values", not_tensors),
    ):
        if keys:
            problems.append(f"{len(keys)} {label}: {_summarise(keys)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: " + "; ".join(problems)
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be cast; the checks above catch the rest
        raise CheckpointError(f"{source}: {exc}") from exc


def _summarise(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return shown + (f" (+{more} more)" if more > 0 else "")


def _optional_int(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _optional_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
