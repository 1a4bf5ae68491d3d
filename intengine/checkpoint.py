"""Read and write Hugging Face checkpoint folders without ``transformers``.

A folder holds ``config.json`` and one of (in this order of preference)

* ``model.safetensors``
* ``model.safetensors.index.json`` + shards
* ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``: no code is unpickled)
* ``pytorch_model.bin.index.json`` + shards

Loading = read config -> family (``model_type``) -> ``Config.from_hf`` -> ``build`` -> key
normalisation -> ``load_state_dict``.  Key normalisation, in order:

1. the family's ``extract_calibration`` reads calibration state (I-BERT ranges) from the raw keys,
2. the family's ``normalize_state_dict`` fixes family quirks (``ibert.*`` -> ``roberta.*``,
   dead NEZHA ``positions_encoding`` buffers),
3. the encoder prefix (``BASE_PREFIX``) is added or stripped so that a task checkpoint loads as
   ``base`` (its head keys are ignored) and a base checkpoint loads under a task,
4. keys matching the family's ``IGNORED_KEYS`` that the model does not have are dropped,
5. tied weights (``lm_head.decoder.weight`` = word embeddings) are filled from whichever alias the
   checkpoint carries.

Anything still missing, unexpected or mis-shaped is reported in ONE :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from .atomic import write_folder_atomically
from .errors import CheckpointError, ConfigError
from .models import TASKS, get_family

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAMES",
    "load_folder",
    "load_state_dict_into",
    "read_config",
    "read_state_dict",
    "save_hf_folder",
]

CONFIG_NAME = "config.json"
SAFE_NAME = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHTS_NAMES = (SAFE_NAME, SAFE_INDEX, BIN_NAME, BIN_INDEX)


# ---------------------------------------------------------------------------------------------
# reading


def read_config(folder: str | os.PathLike) -> dict:
    """``config.json`` of ``folder`` as a dict (CheckpointError if missing or not JSON)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: config file not found")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                out[key] = f.get_tensor(key)
        return out
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from exc


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (refused code), RuntimeError (bad zip), EOFError
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file (only plain tensors are accepted; "
            f"truncated or corrupt?): {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not named tensors: {bad[:10]}")
    return obj


def _load_index(index_path: Path, loader) -> dict[str, torch.Tensor]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index_path}: not a readable JSON index ({exc})") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: field 'weight_map' missing or empty")
    shards = sorted(set(weight_map.values()))
    missing_files = [s for s in shards if not (index_path.parent / s).is_file()]
    if missing_files:
        raise CheckpointError(f"{index_path}: shard files not found: {missing_files}")
    sd: dict[str, torch.Tensor] = {}
    for shard in shards:
        sd.update(loader(index_path.parent / shard))
    absent = sorted(k for k in weight_map if k not in sd)
    if absent:
        raise CheckpointError(
            f"{index_path}: keys listed in weight_map but absent from shards: {absent}"
        )
    return sd


def read_state_dict(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Path]:
    """Raw tensors of the folder's weights and the file they came from."""
    folder = Path(folder)
    for name in WEIGHTS_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        if name == SAFE_NAME:
            return _load_safetensors(path), path
        if name == SAFE_INDEX:
            return _load_index(path, _load_safetensors), path
        if name == BIN_NAME:
            return _load_bin(path), path
        return _load_index(path, _load_bin), path
    raise CheckpointError(
        f"{folder}: no weights file found (looked for {', '.join(WEIGHTS_NAMES)})"
    )


# ---------------------------------------------------------------------------------------------
# matching keys


def _alias_groups(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """``state_dict`` entries and the groups of keys that share one tensor (tied weights)."""
    entries = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for key, tensor in entries.items():
        groups.setdefault(id(tensor), []).append(key)
    return entries, list(groups.values())


def load_state_dict_into(
    model: nn.Module, sd: dict[str, torch.Tensor], family, source: str
) -> list[str]:
    """Match ``sd`` to ``model`` (steps 3-5 of the module docstring) and load it.

    Returns the checkpoint keys that were ignored.  Raises one CheckpointError listing every
    missing, unexpected and mis-shaped key.
    """
    prefix = getattr(family, "BASE_PREFIX", "") + "."
    expected_keys = set(model.state_dict().keys())
    model_prefixed = prefix != "." and any(k.startswith(prefix) for k in expected_keys)
    ckpt_prefixed = prefix != "." and any(k.startswith(prefix) for k in sd)
    ignored: list[str] = []
    if model_prefixed and not ckpt_prefixed:  # base checkpoint -> task model
        sd = {prefix + k: v for k, v in sd.items()}
    elif not model_prefixed and ckpt_prefixed:  # task checkpoint -> base model: drop the head
        stripped = {}
        for k, v in sd.items():
            if k.startswith(prefix):
                stripped[k[len(prefix) :]] = v
            else:
                ignored.append(k)
        sd = stripped
        # A task checkpoint usually has no pooler: then the base model has none either.
        if getattr(model, "pooler", None) is not None and not any(
            k.startswith("pooler.") for k in sd
        ):
            model.pooler = None
            expected_keys = set(model.state_dict().keys())

    patterns = [re.compile(p) for p in getattr(family, "IGNORED_KEYS", ())]
    for k in list(sd):
        if k not in expected_keys and any(p.fullmatch(k) for p in patterns):
            ignored.append(k)
            del sd[k]

    entries, groups = _alias_groups(model)
    full: dict[str, torch.Tensor] = {}
    missing, mismatched = [], []
    for group in groups:
        present = [k for k in group if k in sd]
        if not present:
            missing.append(group[0])
            continue
        value = sd[present[0]]
        want = tuple(entries[group[0]].shape)
        if tuple(value.shape) != want:
            mismatched.append(f"{present[0]}: checkpoint {tuple(value.shape)} vs model {want}")
            continue
        target_dtype = entries[group[0]].dtype
        if value.dtype != target_dtype and (
            value.dtype.is_floating_point or target_dtype.is_floating_point
        ):
            value = value.to(target_dtype)
        for k in group:
            full[k] = value
    unexpected = sorted(k for k in sd if k not in expected_keys)
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {sorted(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
        what = f"{type(model).__name__} (task {getattr(model, 'task', '?')!r})"
        raise CheckpointError(f"{source}: weights do not match {what}; " + "; ".join(parts))
    model.load_state_dict(full, strict=True)
    return ignored


def load_folder(
    folder: str | os.PathLike, task: str = "base", num_labels: int | None = None
) -> nn.Module:
    """Load a Hugging Face checkpoint folder as an eval-mode FP32 module for ``task``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    config_path = folder / CONFIG_NAME
    d = read_config(folder)
    family = get_family(d.get("model_type"), str(config_path))
    cfg = family.Config.from_hf(d, str(config_path))
    sd, weights_path = read_state_dict(folder)
    extras = family.extract_calibration(sd, cfg) if hasattr(family, "extract_calibration") else {}
    if hasattr(family, "normalize_state_dict"):
        sd = family.normalize_state_dict(sd, cfg)
    model = family.build(cfg, task, num_labels)
    with torch.no_grad():
        ignored = load_state_dict_into(model, dict(sd), family, str(weights_path))
    model.calibration_ranges = {}
    for name, value in extras.items():
        setattr(model, name, value)
    model.ignored_keys = ignored
    model.source = str(folder)
    model.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# writing


def _architecture(model: nn.Module) -> str | None:
    import importlib

    family = importlib.import_module(model.family)
    if hasattr(family, "architecture"):
        return family.architecture(model.config, model.task)
    return getattr(family, "HF_ARCHITECTURES", {}).get(model.task)


def save_hf_folder(
    model_or_preset,
    path: str | os.PathLike,
    *,
    task: str = "base",
    num_labels: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a model (or a preset, random-initialised with ``seed``) as an HF folder.

    The folder gets ``config.json`` and ``model.safetensors`` (tied tensors stored once, under the
    key Hugging Face keeps).  It is written to a temporary folder beside ``path`` and renamed into
    place, so a crash never leaves a half-written checkpoint.  An existing non-empty ``path`` is
    replaced only with ``overwrite=True``.  ``task``/``num_labels``/``seed`` apply to presets.
    """
    from safetensors.torch import save_file

    if isinstance(model_or_preset, (str, os.PathLike)):
        from .api import load_fp32

        model = load_fp32(model_or_preset, task=task, num_labels=num_labels, seed=seed)
    else:
        model = model_or_preset
    if not all(hasattr(model, a) for a in ("config", "task", "family")):
        raise CheckpointError(
            f"save_hf_folder needs a module built by intengine (with config/task/family), "
            f"got {type(model).__name__}"
        )
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CheckpointError(f"{path}: folder exists and is not empty (pass overwrite=True)")
    path.parent.mkdir(parents=True, exist_ok=True)

    config = model.config.to_hf()
    arch = _architecture(model)
    if arch:
        config["architectures"] = [arch]
    config["torch_dtype"] = "float32"

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:  # tied alias: HF saves only the first (embedding, lm_head.bias)
            continue
        seen.add(id(tensor))
        tensors[key] = (
            tensor.detach()
            .to(torch.float32 if tensor.is_floating_point() else tensor.dtype)
            .contiguous()
            .clone()
        )

    import importlib

    family = importlib.import_module(model.family)
    if hasattr(family, "to_hf_state_dict"):
        tensors = family.to_hf_state_dict(tensors, model)

    def fill(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        save_file(tensors, str(tmp / SAFE_NAME), metadata={"format": "pt"})

    return write_folder_atomically(path, fill)
