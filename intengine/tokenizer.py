"""Tokenizers for the four encoder families, loaded from a checkpoint folder.

``load_tokenizer(path)`` returns a :class:`Tokenizer` that turns text into the
``input_ids`` / ``attention_mask`` / ``token_type_ids`` arrays the models take.
transformers is not used; results match its tokenizers on the same files.

Backends (chosen by the files in the folder):

* ``tokenizer.json`` -> the ``tokenizers`` library does normalisation,
  pre-tokenisation, the model and added tokens; its post-processor (when the
  file has one) adds the special tokens and type ids, else the family template
  is used.  Pair truncation follows the ``tokenizers`` rule (the fast HF path).
* native files, each re-implemented after the family's slow HF tokenizer:

  ========== ======================= ==========================================
  family     files                   core
  ========== ======================= ==========================================
  roberta    vocab.json, merges.txt  GPT-2 byte-level BPE, ``<s> A </s></s> B </s>``
  deberta    vocab.json, merges.txt  same BPE, ``[CLS] A [SEP] B [SEP]``
  deberta-v2 spm.model               SentencePiece (+ split_by_punct, lower case)
  bert       vocab.txt               basic tokenizer + greedy WordPiece (NEZHA too)
  ========== ======================= ==========================================

  Added/special tokens written in the text are matched first (longest first,
  with their lstrip/rstrip flags); the rest goes through the core.  Pair
  truncation follows the slow HF rule (the first sequence keeps the odd token).

Special tokens come from ``tokenizer_config.json``, ``special_tokens_map.json``
and ``added_tokens.json`` when present, family defaults otherwise.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import TokenizerError

__all__ = ["FAMILIES", "Tokenizer", "load_tokenizer"]

# model_type (config.json) or user-given name -> family
FAMILIES = {
    "roberta": "roberta",
    "ibert": "roberta",
    "i-bert": "roberta",
    "deberta": "deberta",
    "deberta-v1": "deberta",
    "deberta-v2": "deberta-v2",
    "deberta_v2": "deberta-v2",
    "deberta-v3": "deberta-v2",
    "bert": "bert",
    "nezha": "bert",
}

_NO_FILES = "expected tokenizer.json, or vocab.json+merges.txt, or spm.model, or vocab.txt"
_LARGE = int(1e20)  # model_max_length at or above this means "no limit" (HF convention)
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                 "mask_token")


@dataclass(frozen=True)
class _FamilySpec:
    cls_token: str
    sep_token: str
    pad_token: str
    unk_token: str
    mask_token: str
    bos_token: str | None
    eos_token: str | None
    double_sep: bool  # pair template <s> A </s></s> B </s>
    segment_ids: bool  # token type 1 for the second segment
    mask_lstrip: bool  # the mask token swallows the space before it
    native_files: tuple[str, ...]


_BPE_FILES = ("vocab.json", "merges.txt")
_BRACKETS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
# fmt: off
_SPECS = {  # cls, sep, pad, unk, mask, bos, eos, double_sep, segment_ids, mask_lstrip, files
    "roberta":    _FamilySpec("<s>", "</s>", "<pad>", "<unk>", "<mask>", "<s>", "</s>",
                              True, False, True, _BPE_FILES),
    "deberta":    _FamilySpec(*_BRACKETS, "[CLS]", "[SEP]", False, True, True, _BPE_FILES),
    "deberta-v2": _FamilySpec(*_BRACKETS, "[CLS]", "[SEP]", False, True, False, ("spm.model",)),
    "bert":       _FamilySpec(*_BRACKETS, None, None, False, True, False, ("vocab.txt",)),
}
# fmt: on


# ----------------------------------------------------------------------------- char classes
# (BERT's definitions: also used by DeBERTa-v2's split_by_punct)


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True  # all non-alphanumeric ASCII counts as punctuation
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _split_on_punct(text: str) -> list[str]:
    """Each punctuation character becomes its own piece; runs of others stay together."""
    out: list[str] = []
    run: list[str] = []
    for ch in text:
        if _is_punctuation(ch):
            if run:
                out.append("".join(run))
                run = []
            out.append(ch)
        else:
            run.append(ch)
    if run:
        out.append("".join(run))
    return out


# ----------------------------------------------------------------------------- file helpers


def _read_json(path: str, expected: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: cannot read {expected}: {e}") from e


def _content(value: Any) -> str | None:
    """A special token given as a string or as an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


# ----------------------------------------------------------------------------- cores
# A core turns one stretch of text (no added tokens in it) into ids.


class _VocabLookup:
    """Id lookups shared by the cores that keep ``vocab`` (token → id) and ``inv`` (id → token)."""

    vocab: dict[str, int]
    inv: dict[int, str]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, i: int) -> str | None:
        return self.inv.get(i)


class _ByteBPE(_VocabLookup):
    """GPT-2 byte-level BPE from vocab.json + merges.txt (RoBERTa, DeBERTa v1)."""

    def __init__(self, vocab_path: str, merges_path: str):
        vocab = _read_json(vocab_path, "a JSON object mapping BPE tokens to integer ids")
        if (
            not isinstance(vocab, dict)
            or not vocab
            or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in vocab.items()
            )
        ):
            raise TokenizerError(
                f"{vocab_path}: expected a non-empty JSON object mapping BPE tokens (str) "
                "to ids (int >= 0)"
            )
        self.vocab: dict[str, int] = vocab
        self.inv = {v: k for k, v in vocab.items()}
        self.ranks: dict[tuple[str, str], int] = {}
        try:
            with open(merges_path, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{merges_path}: cannot read BPE merges: {e}") from e
        for n, line in enumerate(lines, 1):
            if not line.strip() or (n == 1 and line.startswith("#version")):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise TokenizerError(
                    f"{merges_path}, line {n}: expected a merge 'left right' (two tokens), "
                    f"got {line!r}"
                )
            self.ranks.setdefault((parts[0], parts[1]), len(self.ranks))
        self.byte_map = _bytes_to_unicode()
        self.byte_unmap = {c: b for b, c in self.byte_map.items()}
        from tokenizers.pre_tokenizers import ByteLevel

        # the GPT-2 split regex, applied and byte-mapped by tokenizers (no prefix space here)
        self._pre = ByteLevel(add_prefix_space=False, use_regex=True)
        self._cache: dict[str, list[str]] = {}
        self.unk_id: int | None = None

    def _bpe(self, word: str) -> list[str]:
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        parts = list(word)
        ranks = self.ranks
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                r = ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best < 0:
                break
            a, b = parts[best], parts[best + 1]
            merged: list[str] = []
            i = 0
            while i < len(parts):  # merge every occurrence, left to right
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        if len(self._cache) < 100_000:
            self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word, _ in self._pre.pre_tokenize_str(text):
            for tok in self._bpe(word):
                i = self.vocab.get(tok, self.unk_id)
                if i is None:
                    raise TokenizerError(
                        f"BPE token {tok!r} is not in vocab.json and there is no unk token"
                    )
                ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.inv.get(i, "") for i in ids)
        data = bytes(self.byte_unmap[c] for c in text if c in self.byte_unmap)
        return data.decode("utf-8", errors="replace")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class _SentencePiece:
    """SentencePiece model (DeBERTa-v2/v3), as the slow DebertaV2Tokenizer runs it."""

    def __init__(self, model_path: str, split_by_punct: bool):
        import sentencepiece

        try:
            with open(model_path, "rb") as f:
                blob = f.read()
            self.sp = sentencepiece.SentencePieceProcessor()
            self.sp.LoadFromSerializedProto(blob)
            n = self.sp.GetPieceSize()
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with C++ text
            raise TokenizerError(
                f"{model_path}: not a valid SentencePiece model (spm.model): {e}"
            ) from e
        if n <= 0:
            raise TokenizerError(f"{model_path}: SentencePiece model has no pieces")
        self.split_by_punct = split_by_punct
        self.pieces = [self.sp.IdToPiece(i) for i in range(n)]
        self.vocab = {p: i for i, p in enumerate(self.pieces)}
        self.unk_id: int | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, i: int) -> str | None:
        return self.pieces[i] if 0 <= i < len(self.pieces) else None

    def encode(self, text: str) -> list[int]:
        if not self.split_by_punct:
            return list(self.sp.EncodeAsIds(text))
        return [i for w in _split_on_punct(text) for i in self.sp.EncodeAsIds(w)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([i for i in ids if 0 <= i < len(self.pieces)])


class _WordPiece(_VocabLookup):
    """BERT basic tokenizer + greedy longest-match WordPiece (BERT, NEZHA)."""

    def __init__(
        self,
        vocab_path: str,
        lower: bool,
        strip_accents: bool | None,
        chinese: bool,
        basic: bool,
        max_chars: int = 100,
    ):
        try:
            with open(vocab_path, encoding="utf-8") as f:
                lines = f.readlines()
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(
                f"{vocab_path}: cannot read WordPiece vocab (one token per line): {e}"
            ) from e
        self.vocab = {}
        for i, line in enumerate(lines):
            self.vocab[line.rstrip("\n")] = i
        if not self.vocab:
            raise TokenizerError(
                f"{vocab_path}: empty WordPiece vocab, expected one token per line"
            )
        self.inv = {i: t for t, i in self.vocab.items()}
        self.n = len(lines)
        self.lower, self.strip_accents, self.chinese, self.basic = (
            lower,
            strip_accents,
            chinese,
            basic,
        )
        self.max_chars = max_chars
        self.unk_id: int | None = None

    def _basic(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif self.chinese and _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFC", "".join(chars))
        out: list[str] = []
        for word in text.split():
            if self.lower:
                word = word.lower()
            if self.strip_accents or (self.lower and self.strip_accents is None):
                word = "".join(
                    c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
                )
            out.extend(_split_on_punct(word))
        return " ".join(out).split()

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = self.vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        words = self._basic(text) if self.basic else text.split()
        ids = [i for w in words for i in self._wordpiece(w)]
        if any(i is None for i in ids):
            raise TokenizerError("WordPiece: a word is not in vocab.txt and there is no unk token")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = " ".join(self.inv.get(i, "") for i in ids)
        return text.replace(" ##", "").replace("##", "").strip()


# ----------------------------------------------------------------------------- truncation


def _pair_budget(n1: int, n2: int, budget: int, odd_to_longer: bool) -> tuple[int, int]:
    """Lengths to keep for a pair under ``budget`` tokens, truncating the longest first.

    When both must be cut, the odd token goes to the first sequence (slow HF
    rule) or to the longer one, the second on a tie (``tokenizers`` rule).
    """
    if n1 + n2 <= budget:
        return n1, n2
    budget = max(budget, 0)
    lo = min(n1, n2)
    if 2 * lo <= budget:  # the shorter one fits whole
        return (n1, budget - n1) if n1 <= n2 else (budget - n2, n2)
    half, odd = divmod(budget, 2)
    if odd_to_longer:
        first_gets_odd = n1 > n2
    else:
        first_gets_odd = True
    return (half + odd, half) if first_gets_odd else (half, half + odd)


# ----------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """Text -> model inputs for one encoder family.  Build it with :func:`load_tokenizer`."""

    def __init__(
        self,
        *,
        path: str,
        family: str,
        backend: str,
        core: Any = None,
        hf: Any = None,
        specials: dict[str, str | None],
        special_ids: dict[str, int | None],
        added: dict[str, int] | None = None,
        strip: dict[str, tuple[bool, bool]] | None = None,
        lower: bool = False,
        prefix_space: bool = False,
        model_max_length: int | None = None,
    ):
        self.path = path
        self.family = family
        self.backend = backend  # "tokenizers", "bpe", "sentencepiece" or "wordpiece"
        self._spec = _SPECS[family]
        self._core = core
        self._hf = hf
        self._specials = specials
        self._ids = special_ids
        self._added = dict(added or {})
        self._added_inv = {i: t for t, i in self._added.items()}
        self._strip = dict(strip or {})
        self._lower = lower
        self._prefix_space = prefix_space
        self.model_max_length = model_max_length
        # added tokens matched in text, longest first
        self._match = sorted(self._added, key=len, reverse=True)
        self._first_chars = {t[0] for t in self._match if t}

    # -- special tokens
    def __repr__(self) -> str:
        return (f"Tokenizer(family={self.family!r}, backend={self.backend!r}, "
                f"path={self.path!r}, size={len(self)})")

    cls_token = property(lambda self: self._specials.get("cls_token"))
    sep_token = property(lambda self: self._specials.get("sep_token"))
    pad_token = property(lambda self: self._specials.get("pad_token"))
    unk_token = property(lambda self: self._specials.get("unk_token"))
    mask_token = property(lambda self: self._specials.get("mask_token"))
    bos_token = property(lambda self: self._specials.get("bos_token"))
    eos_token = property(lambda self: self._specials.get("eos_token"))
    cls_token_id = property(lambda self: self._ids.get("cls_token"))
    sep_token_id = property(lambda self: self._ids.get("sep_token"))
    pad_token_id = property(lambda self: self._ids.get("pad_token"))
    unk_token_id = property(lambda self: self._ids.get("unk_token"))
    mask_token_id = property(lambda self: self._ids.get("mask_token"))
    bos_token_id = property(lambda self: self._ids.get("bos_token"))
    eos_token_id = property(lambda self: self._ids.get("eos_token"))

    @property
    def special_token_ids(self) -> set[int]:
        return {i for i in self._ids.values() if i is not None}

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (without tokens added on top), like HF's ``vocab_size``."""
        if self._hf is not None:
            return self._hf.get_vocab_size(with_added_tokens=False)
        return self._core.vocab_size

    def __len__(self) -> int:
        """Number of distinct ids, added tokens included (the embedding needs this many rows)."""
        if self._hf is not None:
            return self._hf.get_vocab_size(with_added_tokens=True)
        extra = sum(1 for t in self._added if self._core.token_to_id(t) is None)
        return self._core.vocab_size + extra

    def token_to_id(self, token: str) -> int | None:
        if self._hf is not None:
            return self._hf.token_to_id(token)
        if token in self._added:
            return self._added[token]
        return self._core.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        if self._hf is not None:
            return self._hf.id_to_token(int(i))
        if i in self._added_inv:
            return self._added_inv[i]
        return self._core.id_to_token(int(i))

    # -- one segment, no special tokens
    def _split_added(self, text: str) -> list[tuple[str, bool]]:
        parts: list[tuple[str, bool]] = []
        if not self._match:
            return [(text, False)]
        start = i = 0
        n = len(text)
        while i < n:
            if text[i] in self._first_chars:
                hit = next((t for t in self._match if text.startswith(t, i)), None)
                if hit is not None:
                    if start < i:
                        parts.append((text[start:i], False))
                    parts.append((hit, True))
                    i += len(hit)
                    start = i
                    continue
            i += 1
        if start < n:
            parts.append((text[start:], False))
        # lstrip/rstrip: an added token may swallow the whitespace beside it
        for k, (piece, is_added) in enumerate(parts):
            if not is_added:
                continue
            lstrip, rstrip = self._strip.get(piece, (False, False))
            if lstrip and k > 0 and not parts[k - 1][1]:
                parts[k - 1] = (parts[k - 1][0].rstrip(), False)
            if rstrip and k + 1 < len(parts) and not parts[k + 1][1]:
                parts[k + 1] = (parts[k + 1][0].lstrip(), False)
        return parts

    def _segment_ids(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"expected text as str, got {type(text).__name__}")
        if self._hf is not None:
            return list(self._hf.encode(text, add_special_tokens=False).ids)
        if self._prefix_space and text and not text[0].isspace():
            text = " " + text
        ids: list[int] = []
        for piece, is_added in self._split_added(text):
            if is_added:
                ids.append(self._added[piece])
            elif piece:
                ids.extend(self._core.encode(piece.lower() if self._lower else piece))
        return ids

    # -- templates
    def _need(self, key: str) -> int:
        i = self._ids.get(key)
        if i is None:
            raise TokenizerError(
                f"{self.path}: the {self.family} template needs a {key} with an id"
            )
        return i

    def _num_special(self, pair: bool) -> int:
        if self._hf is not None and self._hf.post_processor is not None:
            return self._hf.num_special_tokens_to_add(pair)
        return (4 if self._spec.double_sep else 3) if pair else 2

    def _template(self, a: list[int], b: list[int] | None) -> tuple[list[int], list[int]]:
        cls, sep = self._need("cls_token"), self._need("sep_token")
        if b is None:
            return [cls, *a, sep], [0] * (len(a) + 2)
        if self._spec.double_sep:
            ids = [cls, *a, sep, sep, *b, sep]
            return ids, [0] * len(ids)
        tt = [0] * (len(a) + 2) + [1 if self._spec.segment_ids else 0] * (len(b) + 1)
        return [cls, *a, sep, *b, sep], tt

    def _encode_one(
        self, text: str, pair: str | None, max_length: int | None, add_special_tokens: bool = True
    ) -> tuple[list[int], list[int]]:
        hf = self._hf
        if hf is not None:
            for t in (text, pair):
                if t is not None and not isinstance(t, str):
                    raise TokenizerError(f"expected text as str, got {type(t).__name__}")
            ea = hf.encode(text, add_special_tokens=False)
            eb = hf.encode(pair, add_special_tokens=False) if pair is not None else None
            a, b = list(ea.ids), (list(eb.ids) if eb is not None else None)
        else:
            a = self._segment_ids(text)
            b = self._segment_ids(pair) if pair is not None else None
        n_special = self._num_special(b is not None) if add_special_tokens else 0
        if max_length is not None:
            budget = max_length - n_special
            if b is None:
                a = a[: max(budget, 0)]
            else:
                ka, kb = _pair_budget(len(a), len(b), budget, odd_to_longer=hf is not None)
                a, b = a[:ka], b[:kb]
        if not add_special_tokens:
            ids = a + (b or [])
            tt = [0] * len(a) + [1 if self._spec.segment_ids else 0] * len(b or [])
            return ids, tt
        if hf is not None and hf.post_processor is not None:
            # the file's own post-processor places the special tokens and type ids
            ea.truncate(len(a))
            if eb is not None:
                eb.truncate(len(b))
            enc = hf.post_process(ea, eb, add_special_tokens=True)
            return list(enc.ids), list(enc.type_ids)
        return self._template(a, b)

    # -- public API
    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        *,
        add_special_tokens: bool = True,
        max_length: int | None = None,
    ) -> list[int]:
        """Ids of one text (or pair) with the family's special tokens.

        Truncated only when ``max_length`` is given.
        """
        return self._encode_one(text, text_pair, max_length, add_special_tokens)[0]

    def tokenize(self, text: str) -> list[str]:
        """Token strings of one text, without special tokens (for inspection)."""
        return [self.id_to_token(i) or "" for i in self._segment_ids(text)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Best-effort text of ``ids`` (special tokens dropped unless skip_special_tokens=False)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)
        special = self.special_token_ids
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._added_inv or i in special:
                if run:
                    out.append(self._core.decode(run))
                    run = []
                if not (skip_special_tokens and i in special):
                    out.append(self._added_inv.get(i) or self.id_to_token(i) or "")
            else:
                run.append(i)
        if run:
            out.append(self._core.decode(run))
        return ("" if self.backend == "bpe" else " ").join(s for s in out if s)

    def __call__(
        self,
        texts: str | Sequence[str],
        text_pairs: str | Sequence[str] | None = None,
        *,
        max_length: int | None = None,
        padding: bool | str = True,
        truncation: bool = True,
    ) -> dict[str, np.ndarray]:
        """Encode a text or a batch (optionally with pairs) into int64 arrays of shape [B, T].

        ``padding``: True/"longest" pads to the longest sequence, "max_length" to
        ``max_length`` (or the tokenizer's ``model_max_length``), False pads nothing
        (all sequences must then have the same length).  ``truncation`` cuts each
        sequence to ``max_length`` (default ``model_max_length`` when the folder sets
        one), cutting the longer sequence of a pair first.  Padding is on the right
        with the pad id, attention mask 0 and token type 0.
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in batch):
            raise TokenizerError("texts must be a str or a list of str")
        pairs: list[str | None]
        if text_pairs is None:
            pairs = [None] * len(batch)
        else:
            pairs = [text_pairs] if isinstance(text_pairs, str) else list(text_pairs)
            if len(pairs) != len(batch) or not all(isinstance(t, str) for t in pairs):
                raise TokenizerError(
                    f"text_pairs must match texts: got {len(pairs)} pair(s) for {len(batch)} "
                    "text(s), all str"
                )
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise TokenizerError(f"max_length must be a positive int, got {max_length!r}")
        if padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise TokenizerError(
                f"padding must be True, False, 'longest' or 'max_length', got {padding!r}"
            )
        limit = max_length if max_length is not None else self.model_max_length
        rows = [self._encode_one(t, p, limit if truncation else None) for t, p in zip(batch, pairs)]
        lengths = [len(ids) for ids, _ in rows]
        longest = max(lengths, default=0)
        if padding == "max_length" and limit is not None:
            width = max(limit, longest)
        elif padding in (True, "longest", "max_length"):
            width = longest
        else:
            if len(set(lengths)) > 1:
                raise TokenizerError(
                    "padding=False but the sequences have different lengths "
                    f"{sorted(set(lengths))}; "
                    "use padding=True to get [B, T] arrays"
                )
            width = longest
        pad = self.pad_token_id
        if any(n < width for n in lengths) and pad is None:
            raise TokenizerError(
                f"{self.path}: padding needs a pad token, and this tokenizer has none"
            )
        b = len(rows)
        input_ids = np.full((b, width), pad if pad is not None else 0, dtype=np.int64)
        attention = np.zeros((b, width), dtype=np.int64)
        types = np.zeros((b, width), dtype=np.int64)
        for r, (ids, tt) in enumerate(rows):
            input_ids[r, : len(ids)] = ids
            attention[r, : len(ids)] = 1
            types[r, : len(tt)] = tt
        return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": types}


# ----------------------------------------------------------------------------- loading


def _infer_family(path: str, family: str | None) -> str:
    if family is not None:
        key = str(family).lower().replace("_", "-")
        if key not in FAMILIES:
            raise TokenizerError(
                f"unknown tokenizer family {family!r}: expected one of {sorted(set(FAMILIES))}"
            )
        return FAMILIES[key]
    cfg_path = os.path.join(path, "config.json")
    if os.path.isfile(cfg_path):
        cfg = _read_json(cfg_path, "the model config (JSON object)")
        mt = cfg.get("model_type") if isinstance(cfg, dict) else None
        if mt is not None:
            key = str(mt).lower().replace("_", "-")
            if key not in FAMILIES:
                raise TokenizerError(
                    f"{cfg_path}: model_type {mt!r} has no tokenizer here: expected one of "
                    f"{sorted(set(FAMILIES))}"
                )
            return FAMILIES[key]
    tc_path = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(tc_path):
        tc = _read_json(tc_path, "the tokenizer config (JSON object)")
        cls = tc.get("tokenizer_class") if isinstance(tc, dict) else None
        if isinstance(cls, str):
            name = cls.removesuffix("Fast").removesuffix("Tokenizer").lower()
            by_class = {
                "roberta": "roberta",
                "ibert": "roberta",
                "deberta": "deberta",
                "debertav2": "deberta-v2",
                "bert": "bert",
                "nezha": "bert",
            }
            if name in by_class:
                return by_class[name]
    has = lambda f: os.path.isfile(os.path.join(path, f))
    if has("tokenizer.json"):
        spec = _read_json(os.path.join(path, "tokenizer.json"), "a tokenizers JSON file")
        model = spec.get("model", {}) if isinstance(spec, dict) else {}
        kind = model.get("type") if isinstance(model, dict) else None
        if kind == "Unigram":
            return "deberta-v2"
        if kind == "WordPiece":
            return "bert"
        vocab = model.get("vocab") if isinstance(model, dict) else None
        if kind == "BPE" and isinstance(vocab, dict):
            return "deberta" if "[CLS]" in vocab else "roberta"
    if has("spm.model"):
        return "deberta-v2"
    if has("vocab.txt"):
        return "bert"
    if has("vocab.json"):
        vocab = _read_json(
            os.path.join(path, "vocab.json"), "a JSON object mapping BPE tokens to ids"
        )
        return "deberta" if isinstance(vocab, dict) and "[CLS]" in vocab else "roberta"
    raise TokenizerError(f"no tokenizer files in {path}: {_NO_FILES}")


def load_tokenizer(path: str | os.PathLike, family: str | None = None) -> Tokenizer:
    """Load the tokenizer of a Hugging Face checkpoint folder.

    ``family`` ("roberta"/"ibert", "deberta", "deberta-v2", "bert"/"nezha") is
    read from ``config.json``'s ``model_type`` when not given, else guessed from
    ``tokenizer_config.json`` and the files present.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise TokenizerError(
            f"tokenizer folder {path} does not exist or is not a folder: {_NO_FILES}"
        )
    fam = _infer_family(path, family)
    spec = _SPECS[fam]
    join = lambda f: os.path.join(path, f)

    tc: dict = {}
    if os.path.isfile(join("tokenizer_config.json")):
        tc = _read_json(join("tokenizer_config.json"), "the tokenizer config (JSON object)")
        if not isinstance(tc, dict):
            raise TokenizerError(f"{join('tokenizer_config.json')}: expected a JSON object")
    stm: dict = {}
    if os.path.isfile(join("special_tokens_map.json")):
        stm = _read_json(join("special_tokens_map.json"), "the special tokens map (JSON object)")
        if not isinstance(stm, dict):
            raise TokenizerError(f"{join('special_tokens_map.json')}: expected a JSON object")

    # special tokens: special_tokens_map.json wins, then tokenizer_config.json, then family defaults
    specials: dict[str, str | None] = {}
    strip: dict[str, tuple[bool, bool]] = {}
    for key in _SPECIAL_KEYS:
        default = getattr(spec, key)
        value = stm.get(key, tc.get(key, default))
        specials[key] = _content(value)
        if isinstance(value, dict):
            strip[specials[key]] = (
                bool(value.get("lstrip", False)),
                bool(value.get("rstrip", False)),
            )
    if spec.mask_lstrip and specials["mask_token"] and specials["mask_token"] not in strip:
        strip[specials["mask_token"]] = (True, False)
    extra = [
        _content(t)
        for t in (stm.get("additional_special_tokens") or tc.get("additional_special_tokens") or [])
    ]
    extra = [t for t in extra if t]

    max_len = tc.get("model_max_length")
    model_max_length = (
        int(max_len) if isinstance(max_len, (int, float)) and 0 < max_len < _LARGE else None
    )

    # ---- tokenizer.json: the tokenizers library does the work
    if os.path.isfile(join("tokenizer.json")):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            hf = HFTokenizer.from_file(join("tokenizer.json"))
        except Exception as e:  # tokenizers raises a plain Exception with serde text
            raise TokenizerError(
                f"{join('tokenizer.json')}: not a valid tokenizers JSON file: {e}"
            ) from e
        hf.no_truncation()
        hf.no_padding()
        ids = {k: (hf.token_to_id(v) if v is not None else None) for k, v in specials.items()}
        return Tokenizer(
            path=path,
            family=fam,
            backend="tokenizers",
            hf=hf,
            specials=specials,
            special_ids=ids,
            model_max_length=model_max_length,
        )

    # ---- native files
    missing = [f for f in spec.native_files if not os.path.isfile(join(f))]
    if missing:
        present = [
            f
            for f in (
                "tokenizer.json",
                "vocab.json",
                "merges.txt",
                "spm.model",
                "vocab.txt",
                "bpe_encoder.bin",
            )
            if os.path.isfile(join(f))
        ]
        if not present:
            raise TokenizerError(f"no tokenizer files in {path}: {_NO_FILES}")
        hint = (
            " (bpe_encoder.bin is the original DeBERTa format: convert it with transformers)"
            if "bpe_encoder.bin" in present
            else ""
        )
        raise TokenizerError(
            f"{path}: the {fam} tokenizer needs tokenizer.json or {' + '.join(spec.native_files)}; "
            f"missing {', '.join(missing)} (found {', '.join(present)}){hint}"
        )
    lower = False
    prefix_space = False
    if fam in ("roberta", "deberta"):
        core: Any = _ByteBPE(join("vocab.json"), join("merges.txt"))
        backend = "bpe"
        prefix_space = bool(tc.get("add_prefix_space", False))
    elif fam == "deberta-v2":
        core = _SentencePiece(join("spm.model"), bool(tc.get("split_by_punct", False)))
        backend = "sentencepiece"
        lower = bool(tc.get("do_lower_case", False))
    else:
        sa = tc.get("strip_accents")
        core = _WordPiece(
            join("vocab.txt"),
            lower=bool(tc.get("do_lower_case", True)),
            strip_accents=None if sa is None else bool(sa),
            chinese=bool(tc.get("tokenize_chinese_chars", True)),
            basic=bool(tc.get("do_basic_tokenize", True)),
        )
        backend = "wordpiece"
        lower = core.lower

    # added tokens: tokenizer_config's added_tokens_decoder, then added_tokens.json, then specials
    added: dict[str, int] = {}
    decoder = tc.get("added_tokens_decoder") or {}
    if isinstance(decoder, dict):
        for k, v in decoder.items():
            content = _content(v)
            if content is None or not str(k).lstrip("-").isdigit():
                raise TokenizerError(
                    f"{join('tokenizer_config.json')}: added_tokens_decoder[{k!r}] must map "
                    "an int id to a token"
                )
            added[content] = int(k)
            if isinstance(v, dict):
                strip[content] = (bool(v.get("lstrip", False)), bool(v.get("rstrip", False)))
    if os.path.isfile(join("added_tokens.json")):
        at = _read_json(join("added_tokens.json"), "a JSON object mapping added tokens to ids")
        if not isinstance(at, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in at.items()
        ):
            raise TokenizerError(
                f"{join('added_tokens.json')}: expected a JSON object mapping tokens (str) "
                "to ids (int)"
            )
        for k, v in at.items():
            added.setdefault(k, v)
    next_id = max([core.vocab_size - 1, *added.values()]) + 1
    for tok in [specials[k] for k in _SPECIAL_KEYS] + extra:
        if tok is None or tok in added:
            continue
        i = core.token_to_id(tok)
        if i is None:  # not in the vocabulary: appended after it, as HF does
            i, next_id = next_id, next_id + 1
        added[tok] = i
    ids = {k: (added.get(v) if v is not None else None) for k, v in specials.items()}
    core.unk_id = ids.get("unk_token")
    return Tokenizer(
        path=path,
        family=fam,
        backend=backend,
        core=core,
        specials=specials,
        special_ids=ids,
        added=added,
        strip=strip,
        lower=lower,
        prefix_space=prefix_space,
        model_max_length=model_max_length,
    )
