"""Public entry points for FP32 reference models."""

from __future__ import annotations

import os

from torch import nn

from .checkpoint import load_folder, save_hf_folder
from .errors import CheckpointError, ConfigError
from .models import TASKS, all_presets, find_preset, init_weights

__all__ = ["load_fp32", "save_hf_folder"]


def load_fp32(
    path_or_preset: str | os.PathLike,
    task: str = "base",
    num_labels: int | None = None,
    *,
    seed: int = 0,
) -> nn.Module:
    """An eval-mode FP32 encoder for ``task``.

    ``path_or_preset`` is a Hugging Face checkpoint folder (``config.json`` + weights) or a
    preset name from a family's ``PRESETS`` (``roberta-tiny``, ``nezha-cn-tiny``, ...), which is
    built with deterministic random weights drawn from ``seed``.

    ``task``: ``base`` (last hidden state; ``.pooled()`` where the family has a pooler),
    ``sequence-classification``, ``token-classification``, ``question-answering`` (``[B, T, 2]``
    start/end logits) or ``masked-lm``.  ``num_labels`` defaults to the config's label count.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if num_labels is not None and (
        not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1
    ):
        raise ConfigError(f"num_labels must be a positive int, got {num_labels!r}")
    if not isinstance(path_or_preset, (str, os.PathLike)):
        raise CheckpointError(
            f"expected a checkpoint folder or preset name, got {type(path_or_preset).__name__}"
        )
    if os.path.isdir(path_or_preset):
        return load_folder(path_or_preset, task=task, num_labels=num_labels)
    name = os.fspath(path_or_preset)
    found = find_preset(name) if isinstance(name, str) else None
    if found is None:
        presets = ", ".join(sorted(all_presets()))
        raise CheckpointError(
            f"{name}: no checkpoint folder at this path and no preset of this name "
            f"(presets: {presets})"
        )
    family, hf_config = found
    cfg = family.Config.from_hf(hf_config, f"preset {name!r}")
    model = family.build(cfg, task, num_labels)
    init_weights(model, seed)
    model.source = f"preset:{name}"
    model.requires_grad_(False)
    return model.eval()
