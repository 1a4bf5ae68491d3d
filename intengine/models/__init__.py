"""FP32 reference encoders and the family protocol that connects them to checkpoints.

intengine reads Hugging Face checkpoint folders itself; ``transformers`` is only used by the
tests.  Every model family lives in one module, ``intengine/models/<family>.py``, and the
checkpoint loader (:mod:`intengine.checkpoint`) and :func:`intengine.api.load_fp32` only talk to
a family through the attributes below.

Family protocol
---------------
A family module provides:

``MODEL_TYPES: tuple[str, ...]``
    The Hugging Face ``model_type`` values it handles, e.g. ``("roberta", "ibert")``.

``Config``
    A frozen dataclass with

    * ``Config.from_hf(d: dict, source: str) -> Config``: reads ``config.json`` values, applying
      the Hugging Face *class* defaults for absent keys (class defaults are not checkpoint
      values: roberta-base has ``max_position_embeddings=514`` while ``RobertaConfig`` says 512).
      A bad or missing value raises :class:`intengine.errors.ConfigError` naming the field and
      ``source`` (the file or preset name).
    * ``cfg.to_hf() -> dict``: a ``config.json`` dict that ``transformers`` can load.
    * ``cfg.num_labels``: the label count stored in the config (``len(id2label)``, default 2).

``build(cfg, task: str, num_labels: int | None) -> torch.nn.Module``
    ``task`` is one of :data:`TASKS`.  The returned module's ``state_dict()`` keys are exactly the
    keys of the matching ``transformers`` class (``RobertaModel`` for ``base``: ``embeddings.*``,
    ``encoder.*``, ``pooler.*``; ``RobertaForSequenceClassification``: ``roberta.*`` +
    ``classifier.{dense,out_proj}.*``; ``NezhaForMaskedLM``: ``nezha.*`` + ``cls.predictions.*``),
    tied weights included under every alias, so loading is key normalisation plus
    ``load_state_dict``.  ``forward(input_ids, attention_mask=None, token_type_ids=None)``
    validates its inputs (:func:`check_inputs`, raising :class:`~intengine.errors.InputError`)
    and returns one tensor:

    * ``base``: last hidden state ``[B, T, H]``; the base module also has ``pooled(...)`` (same
      arguments) where the family has a pooler,
    * ``sequence-classification``: logits ``[B, num_labels]``,
    * ``token-classification``: logits ``[B, T, num_labels]``,
    * ``question-answering``: start/end logits stacked on the last axis, ``[B, T, 2]``,
    * ``masked-lm``: vocabulary logits ``[B, T, V]`` (decoder tied to the word embeddings unless
      ``tie_word_embeddings`` is false).

    Every built module carries ``config`` (the Config), ``task``, ``family`` (the module name)
    and ``calibration_ranges`` (``{}`` unless a checkpoint supplied calibrated ranges).

``BASE_PREFIX: str``
    The attribute name of the encoder inside task modules (``"roberta"``, ``"nezha"``,
    ``"deberta"``).  The loader adds or strips it so that a task checkpoint loads as ``base``
    (head keys are then ignored) and a base checkpoint loads under a task (head keys missing ->
    error).

``PRESETS: dict[str, dict]``
    Preset name -> Hugging Face config dict (e.g. ``roberta-base``, ``roberta-tiny``).  ``-tiny``
    presets are small (hidden 32-64, 2 layers, vocab ~1000) and are used with deterministic,
    seeded random weights (:func:`init_weights`).

``TOKENIZER_KIND: str``
    ``"bpe"``, ``"wordpiece"`` or ``"sentencepiece"``, for :mod:`intengine.tokenizer`.

``HF_ARCHITECTURES: dict[str, str]``
    task -> ``transformers`` class name, written to ``config.json["architectures"]`` by
    :func:`intengine.checkpoint.save_hf_folder`.

Optional:

``IGNORED_KEYS: tuple[str, ...]``
    Regular expressions (``re.fullmatch``) for checkpoint keys that are dropped silently when
    the module does not have them (dead buffers, a pooler the task model does not use, the NSP
    head of a pre-training checkpoint).

``normalize_state_dict(sd: dict, cfg) -> dict``
    Family quirks applied before matching keys: I-BERT's ``ibert.*`` -> ``roberta.*`` and its
    quantization buffers removed; NEZHA's dead ``positions_encoding`` buffers removed.

``extract_calibration(sd: dict, cfg) -> dict[str, object]``
    Called on the raw state dict; returns attributes to set on the loaded module (I-BERT:
    ``calibration_ranges`` ``{module: (x_min, x_max)}`` and ``layernorm_shifts``), only for
    buffers that were actually calibrated (not left at their init values).

``to_hf_state_dict(sd: dict, model) -> dict``
    Inverse of ``normalize_state_dict`` for :func:`intengine.checkpoint.save_hf_folder` (I-BERT
    models are written under ``ibert.*``, calibrated ranges restored).

``architecture(cfg, task) -> str``
    Overrides ``HF_ARCHITECTURES`` where the class name depends on the config (``IBert*``).

Family table
------------
:data:`FAMILIES` maps ``model_type`` to the family module, imported lazily on first use, so a
family that is still being written (or fails to import) does not break the others.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator, Mapping
from types import ModuleType

import torch
from torch import nn

from ..errors import ConfigError, InputError

__all__ = [
    "FAMILIES",
    "FAMILY_MODULES",
    "TASKS",
    "all_presets",
    "cfg_value",
    "check_inputs",
    "find_preset",
    "get_family",
    "init_weights",
    "read_labels",
]

TASKS = (
    "base",
    "sequence-classification",
    "token-classification",
    "question-answering",
    "masked-lm",
)

# model_type -> module path.  Keep this table in sync with each family's MODEL_TYPES.
FAMILY_MODULES: dict[str, str] = {
    "roberta": "intengine.models.roberta",
    "ibert": "intengine.models.roberta",
    "nezha": "intengine.models.nezha",
    "deberta": "intengine.models.deberta",
    "deberta-v2": "intengine.models.deberta_v2",
}


class _LazyFamilies(Mapping):
    """``model_type -> family module``; each module is imported on first access."""

    def __init__(self, table: dict[str, str]):
        self._table = table

    def __getitem__(self, model_type: str) -> ModuleType:
        if model_type not in self._table:
            raise KeyError(model_type)
        return importlib.import_module(self._table[model_type])

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


FAMILIES: Mapping[str, ModuleType] = _LazyFamilies(FAMILY_MODULES)


def get_family(model_type: object, source: str) -> ModuleType:
    """The family module for ``model_type``; ConfigError naming ``source`` if unknown."""
    if not isinstance(model_type, str) or model_type not in FAMILY_MODULES:
        known = ", ".join(sorted(FAMILY_MODULES))
        raise ConfigError(
            f"{source}: field 'model_type' is {model_type!r}; intengine supports {known}"
        )
    try:
        return FAMILIES[model_type]
    except ImportError as exc:  # a family module that is missing or broken
        raise ConfigError(
            f"{source}: model_type {model_type!r} needs {FAMILY_MODULES[model_type]}, "
            f"which could not be imported ({exc})"
        ) from exc


def _importable_families() -> list[ModuleType]:
    modules = []
    for name in dict.fromkeys(FAMILY_MODULES.values()):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


def all_presets() -> dict[str, ModuleType]:
    """Preset name -> family module, over every family that imports."""
    out: dict[str, ModuleType] = {}
    for fam in _importable_families():
        for name in getattr(fam, "PRESETS", {}):
            out[name] = fam
    return out


def find_preset(name: str) -> tuple[ModuleType, dict] | None:
    """``(family, hf_config_dict)`` for a preset name, or None."""
    fam = all_presets().get(name)
    if fam is None:
        return None
    return fam, dict(fam.PRESETS[name])


def cfg_value(
    d: dict, key: str, default, kind, source: str, *, positive: bool = False, optional: bool = False
):
    """Read ``d[key]`` (or ``default`` when absent) and check its type.

    ``kind`` is ``int``, ``float``, ``str`` or ``bool``.  ``optional`` allows an explicit null.
    Raises ConfigError naming the field and ``source``.  Family ``from_hf`` methods use it for
    every field.
    """
    value = d.get(key, default)
    if value is None and (optional or default is None):
        return None
    ok: bool
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value)
    elif kind is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{source}: field {key!r} must be {kind.__name__}, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{source}: field {key!r} must be > 0, got {value!r}")
    return value


def read_labels(d: dict, source: str) -> tuple[int, dict | None]:
    """``(num_labels, id2label)`` from a config dict: ``len(id2label)`` when present, else
    ``num_labels`` (default 2).  Default names (``LABEL_i``) come back as None."""
    id2label = d.get("id2label")
    if id2label is None:
        return cfg_value(d, "num_labels", 2, int, source, positive=True), None
    if not isinstance(id2label, dict) or not id2label:
        raise ConfigError(f"{source}: field 'id2label' must be a non-empty object")
    try:
        labels = {str(int(k)): v for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: field 'id2label' keys must be integers") from None
    if sorted(int(k) for k in labels) != list(range(len(labels))):
        raise ConfigError(f"{source}: field 'id2label' keys must be 0..{len(labels) - 1}")
    if all(v == f"LABEL_{k}" for k, v in labels.items()):
        return len(labels), None
    return len(labels), labels


def check_inputs(
    input_ids,
    attention_mask=None,
    token_type_ids=None,
    *,
    vocab_size: int,
    max_length: int,
    type_vocab_size: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate encoder inputs and return ``(input_ids, attention_mask, token_type_ids)``.

    * ``input_ids``: integer tensor ``[B, T]`` (or ``[T]``, treated as ``B=1``), values in
      ``[0, vocab_size)``, ``1 <= T <= max_length``.  Returned as int64.
    * ``attention_mask``: bool/integer/float ``[B, T]`` of 0/1 (1 = real token); defaults to
      all ones.  Returned as bool.
    * ``token_type_ids``: integer ``[B, T]`` in ``[0, type_vocab_size)``; None stays None (the
      model uses type 0).  A family without token types passes ``type_vocab_size=0`` and gets an
      error if they are given.

    Numpy arrays are accepted and converted.  Any problem raises InputError.
    """
    ids = _as_tensor(input_ids, "input_ids")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise InputError(f"input_ids must be an integer tensor, got dtype {ids.dtype}")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2:
        raise InputError(f"input_ids must have shape [batch, seq_len], got {tuple(ids.shape)}")
    batch, length = ids.shape
    if batch == 0 or length == 0:
        raise InputError(f"input_ids is empty: shape {tuple(ids.shape)}")
    if length > max_length:
        raise InputError(
            f"sequence length {length} exceeds the {max_length} positions this model supports"
        )
    ids = ids.long()
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise InputError(f"input_ids holds id {bad}, outside the vocabulary [0, {vocab_size})")

    if attention_mask is None:
        mask = torch.ones_like(ids, dtype=torch.bool)
    else:
        mask_t = _as_tensor(attention_mask, "attention_mask")
        if mask_t.dim() == 1 and batch == 1:
            mask_t = mask_t.unsqueeze(0)
        if tuple(mask_t.shape) != (batch, length):
            raise InputError(
                f"attention_mask must have the shape of input_ids {(batch, length)}, "
                f"got {tuple(mask_t.shape)}"
            )
        if mask_t.dtype.is_complex:
            raise InputError(f"attention_mask has unsupported dtype {mask_t.dtype}")
        if mask_t.dtype != torch.bool and not bool(((mask_t == 0) | (mask_t == 1)).all()):
            raise InputError("attention_mask must hold only 0 and 1")
        mask = mask_t.bool()

    types = None
    if token_type_ids is not None:
        types = _as_tensor(token_type_ids, "token_type_ids")
        if types.dtype.is_floating_point or types.dtype.is_complex or types.dtype == torch.bool:
            raise InputError(f"token_type_ids must be an integer tensor, got dtype {types.dtype}")
        if types.dim() == 1 and batch == 1:
            types = types.unsqueeze(0)
        if tuple(types.shape) != (batch, length):
            raise InputError(
                f"token_type_ids must have the shape of input_ids {(batch, length)}, "
                f"got {tuple(types.shape)}"
            )
        types = types.long()
        if type_vocab_size <= 0:
            if bool(types.any()):
                raise InputError(
                    "this model has no token type embeddings; token_type_ids must be 0"
                )
            types = None
        elif int(types.min()) < 0 or int(types.max()) >= type_vocab_size:
            raise InputError(
                f"token_type_ids must lie in [0, {type_vocab_size}), "
                f"got range [{int(types.min())}, {int(types.max())}]"
            )
    return ids, mask.to(ids.device), types


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        import numpy as np

        if isinstance(x, np.ndarray):
            return torch.from_numpy(x)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, (list, tuple)):
        try:
            return torch.tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"{name} could not be converted to a tensor: {exc}") from exc
    raise InputError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")


def init_weights(module: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Deterministic random init, like Hugging Face's ``_init_weights`` but seeded locally.

    Linear/embedding weights ~ N(0, std); biases 0; LayerNorm weight 1, bias 0; embedding rows at
    ``padding_idx`` zeroed.  Parameters are visited in ``named_parameters`` order with a private
    ``torch.Generator``, so the global RNG is untouched and the result depends only on ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.LayerNorm):
                if sub.weight is not None:
                    sub.weight.fill_(1.0)
                if sub.bias is not None:
                    sub.bias.zero_()
        layer_norm_params = {
            id(p) for m in module.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()
        }
        for name, p in module.named_parameters():
            if id(p) in layer_norm_params:
                continue
            if name.endswith("bias") or p.dim() == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        for sub in module.modules():
            if isinstance(sub, nn.Embedding) and sub.padding_idx is not None:
                sub.weight[sub.padding_idx].zero_()
    return module


def build_from_classes(cfg, task: str, num_labels: int | None, make_base, task_classes: Mapping, family: str) -> nn.Module:
    """Shared ``build`` of families whose task models are one class per task (RoBERTa, NEZHA).

    ``num_labels=None`` takes the config's label count; another count replaces it in the config
    (``model.config`` always describes the head it carries).  ``make_base(cfg)`` builds the
    ``base`` task's module.
    """
    import dataclasses

    if num_labels is None:
        num_labels = cfg.num_labels
    elif num_labels != cfg.num_labels:
        cfg = dataclasses.replace(cfg, num_labels=num_labels, id2label=None)
    if task == "base":
        model = make_base(cfg)
    elif task in task_classes:
        model = task_classes[task](cfg, num_labels)
    else:
        raise ConfigError(f"unknown task {task!r}; expected one of base, {', '.join(task_classes)}")
    model.task = task
    model.family = family
    model.calibration_ranges = {}
    return model.eval()
