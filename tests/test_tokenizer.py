"""Tokenizer parity with transformers on vocabularies built here (no hub access).

Each family gets a tiny vocabulary trained in the test session, saved once with
the slow transformers tokenizer (native files: vocab.json+merges.txt, spm.model,
vocab.txt) and once with the fast one (tokenizer.json).  ``load_tokenizer`` must
give the same input_ids / attention_mask / token_type_ids as the tokenizer that
transformers would build from the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
spm = pytest.importorskip("sentencepiece")

from intengine import load_tokenizer
from intengine.errors import TokenizerError

transformers.logging.set_verbosity_error()

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Hello there, how are you doing today?",
    "Integer-only inference for transformer encoders: RoBERTa, DeBERTa and NEZHA.",
    "Café déjà vu, naïve façade, résumé, coöperate, Ångström, São Paulo.",
    "你好，世界。我们今天学习中文分词。北京欢迎你！",
    "Numbers like 12345, 3.14159 and 2,718 appear in text; so do dates: 2024-01-31.",
    "don't can't won't I'm we'll they've she'd it's",
    "Quantization maps floating point values to integers with a scale.",
    "emoji 😀 🎉 👍 are sometimes in tweets #nlp @user http://example.com",
    "UPPER CASE and lower case and MiXeD CaSe words.",
    "Straße, Œuvre, ﬁnance, İstanbul, ΑΒΓ αβγ, Привет мир.",
    "tabs\tand\nnewlines are whitespace too.",
] * 4

TEXTS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "",
    " ",
    "Café déjà vu, naïve façade — résumé",
    "你好，世界。中文测试 mixed with English",
    "emoji 😀🎉 party 👍🏽 ok",
    "tabs\tand\nnewlines\r\n here",
    "don't can't I'm we'll they've",
    "numbers 12345 and 3.14159!!! (parens) [brackets] {braces}",
    "MiXeD CaSe ÅÄÖ ß İstanbul ﬁ",
    "Zürich—Genève…  multiple   spaces",
    "unknownwordzzzqqq xylophone",
    "a" * 30 + " " + "b" * 7,
]

PAIRS = [
    ("Hello world!", "How are you?"),
    ("", "second only"),
    ("first only", ""),
    ("Café déjà vu", "你好，世界"),
    ("one two three four five six seven eight", "nine ten eleven twelve thirteen fourteen"),
    ("short", "a much longer second sentence with many many words in it"),
    ("a much longer first sentence with many many words in it", "short"),
]


def _train_byte_bpe(specials: list[str]) -> tokenizers.Tokenizer:
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS, vocab_size=500, min_frequency=2, special_tokens=specials, show_progress=False
    )
    return bpe


def _write_config(folder, model_type):
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": model_type}, f)


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    """Raw vocab.json + merges.txt for RoBERTa-style and DeBERTa-v1-style specials."""
    out = {}
    for fam, specials in (
        ("roberta", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
        ("deberta", ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]),
    ):
        d = tmp_path_factory.mktemp(f"{fam}_raw")
        _train_byte_bpe(specials).save_model(str(d))
        out[fam] = d
    return out


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm_raw")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_prefix=str(d / "spm"),
        vocab_size=150,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=0.98,
        pad_id=0,
        pad_piece="[PAD]",
        bos_id=1,
        bos_piece="[CLS]",
        eos_id=2,
        eos_piece="[SEP]",
        unk_id=3,
        unk_piece="[UNK]",
        minloglevel=2,
    )
    return d / "spm.model"


@pytest.fixture(scope="module")
def wordpiece_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("wp_raw")
    wp = tokenizers.BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    wp.train_from_iterator(
        CORPUS + [c.lower() for c in CORPUS],
        vocab_size=400,
        min_frequency=1,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False,
    )
    wp.save_model(str(d))
    return d / "vocab.txt"


def _hf_slow_fast(family, bpe_files, spm_file, wordpiece_file, **kw):
    T = transformers
    if family in ("roberta", "deberta"):
        raw = bpe_files[family]
        args = (str(raw / "vocab.json"), str(raw / "merges.txt"))
        slow_cls, fast_cls = {
            "roberta": (T.RobertaTokenizer, T.RobertaTokenizerFast),
            "deberta": (T.DebertaTokenizer, T.DebertaTokenizerFast),
        }[family]
    elif family == "deberta-v2":
        args = (str(spm_file),)
        slow_cls, fast_cls = T.DebertaV2Tokenizer, T.DebertaV2TokenizerFast
    else:
        args = (str(wordpiece_file),)
        slow_cls, fast_cls = T.BertTokenizer, T.BertTokenizerFast
    slow = slow_cls(*args, **kw)
    fast = fast_cls(*args, **kw) if family != "deberta-v2" else fast_cls(vocab_file=args[0], **kw)
    return slow, fast


# family name -> (model_type for config.json, tokenizer kwargs)
VARIANTS = {
    "roberta": ("roberta", {}),
    "ibert-prefix": ("ibert", {"add_prefix_space": True}),
    "deberta": ("deberta", {}),
    "deberta-v2": ("deberta-v2", {}),
    "deberta-v2-punct-lower": ("deberta-v2", {"split_by_punct": True, "do_lower_case": True}),
    "bert-uncased": ("bert", {"do_lower_case": True}),
    "nezha-cased": ("nezha", {"do_lower_case": False}),
    "bert-cased-strip": ("bert", {"do_lower_case": False, "strip_accents": True}),
}
FAMILY_OF = {
    "roberta": "roberta",
    "ibert": "roberta",
    "deberta": "deberta",
    "deberta-v2": "deberta-v2",
    "bert": "bert",
    "nezha": "bert",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, bpe_files, spm_file, wordpiece_file):
    """variant -> (slow HF tok, fast HF tok, native folder, tokenizer.json folder)."""
    out = {}
    for name, (model_type, kw) in VARIANTS.items():
        fam = FAMILY_OF[model_type]
        slow, fast = _hf_slow_fast(fam, bpe_files, spm_file, wordpiece_file, **kw)
        native = tmp_path_factory.mktemp(f"{name}_native")
        slow.save_pretrained(str(native))
        assert not (native / "tokenizer.json").exists()
        _write_config(native, model_type)
        js = tmp_path_factory.mktemp(f"{name}_json")
        fast.save_pretrained(str(js))
        assert (js / "tokenizer.json").exists()
        for f in (
            "vocab.json",
            "merges.txt",
            "spm.model",
            "vocab.txt",
        ):  # force the tokenizer.json path
            if (js / f).exists():
                (js / f).unlink()
        _write_config(js, model_type)
        out[name] = (slow, fast, native, js)
    return out


def _hf_call(tok, texts, pairs=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = tok(
            texts,
            pairs,
            return_tensors="np",
            return_token_type_ids=True,
            return_attention_mask=True,
            **kw,
        )
    return {
        k: np.asarray(enc[k], dtype=np.int64)
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }


def _assert_same(ours, ref, what):
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert ours[k].dtype == np.int64, (what, k)
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=f"{what}: {k}")


CASES = [
    # (our kwargs, HF kwargs)
    ({}, {"padding": True}),
    ({"max_length": 9}, {"padding": True, "truncation": True, "max_length": 9}),
    (
        {"max_length": 24, "padding": "max_length"},
        {"padding": "max_length", "truncation": True, "max_length": 24},
    ),
    ({"max_length": 12}, {"padding": True, "truncation": True, "max_length": 12}),
]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("path_kind", ["native", "json"])
def test_parity_batches(saved, variant, path_kind):
    slow, fast, native, js = saved[variant]
    ref_tok, folder = (slow, native) if path_kind == "native" else (fast, js)
    tok = load_tokenizer(folder)
    assert tok.backend == ("tokenizers" if path_kind == "json" else tok.backend)
    assert tok.family == FAMILY_OF[VARIANTS[variant][0]]
    # each text alone (exact ids), then batches
    for t in TEXTS:
        assert tok.encode(t) == ref_tok.encode(t), (variant, path_kind, t)
    a = [p[0] for p in PAIRS]
    b = [p[1] for p in PAIRS]
    for ours_kw, hf_kw in CASES:
        _assert_same(
            tok(TEXTS, **ours_kw),
            _hf_call(ref_tok, TEXTS, **hf_kw),
            f"{variant}/{path_kind} single {ours_kw}",
        )
        _assert_same(
            tok(a, b, **ours_kw),
            _hf_call(ref_tok, a, b, **hf_kw),
            f"{variant}/{path_kind} pair {ours_kw}",
        )


@pytest.mark.parametrize("variant", ["roberta", "deberta", "deberta-v2", "bert-uncased"])
@pytest.mark.parametrize("path_kind", ["native", "json"])
def test_pair_truncation_every_budget(saved, variant, path_kind):
    """Longest-first truncation, including the odd-token tie rule of each HF path."""
    slow, fast, native, js = saved[variant]
    ref_tok, folder = (slow, native) if path_kind == "native" else (fast, js)
    tok = load_tokenizer(folder)
    pairs = [
        ("one two three four five", "six seven eight nine ten"),  # equal lengths
        ("alpha beta gamma", "one two three four five six seven"),
        ("one two three four five six seven", "alpha beta gamma"),
    ]
    for first, second in pairs:
        for m in range(6, 22):
            ours = tok(first, second, max_length=m)
            ref = _hf_call(ref_tok, first, second, truncation=True, max_length=m)
            _assert_same(ours, ref, f"{variant}/{path_kind} max_length={m} {first!r}/{second!r}")


@pytest.mark.parametrize(
    "variant,mask",
    [
        ("roberta", "<mask>"),
        ("deberta", "[MASK]"),
        ("deberta-v2", "[MASK]"),
        ("bert-uncased", "[MASK]"),
    ],
)
def test_special_tokens_in_text(saved, variant, mask):
    slow, fast, native, js = saved[variant]
    texts = [f"Hello {mask} world", f"{mask}", f"a{mask}b  {mask}  c", f"The {mask}{mask} end."]
    for ref_tok, folder in ((slow, native), (fast, js)):
        tok = load_tokenizer(folder)
        for t in texts:
            assert tok.encode(t) == ref_tok.encode(t), (variant, folder.name, t)
        assert tok.mask_token_id == ref_tok.mask_token_id


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_special_ids_and_sizes(saved, variant):
    slow, fast, native, js = saved[variant]
    for ref_tok, folder in ((slow, native), (fast, js)):
        tok = load_tokenizer(folder)
        for key in ("cls", "sep", "pad", "unk", "mask"):
            assert getattr(tok, f"{key}_token_id") == getattr(ref_tok, f"{key}_token_id"), (
                variant,
                key,
            )
            assert getattr(tok, f"{key}_token") == str(getattr(ref_tok, f"{key}_token")), (
                variant,
                key,
            )
        assert tok.vocab_size == ref_tok.vocab_size
        assert len(tok) == len(ref_tok)


def test_raw_files_without_configs(bpe_files, spm_file, wordpiece_file, tmp_path, saved):
    """Only the vocabulary files: family given or guessed, family defaults for the specials."""
    for fam, variant in (("roberta", "roberta"), ("deberta", "deberta")):
        tok = load_tokenizer(bpe_files[fam])  # guessed from the vocab ([CLS] -> deberta)
        assert tok.family == fam
        slow = saved[variant][0]
        for t in TEXTS[:8]:
            assert tok.encode(t) == slow.encode(t), (fam, t)
    d = tmp_path / "spm"
    d.mkdir()
    shutil.copy(spm_file, d / "spm.model")
    tok = load_tokenizer(d)
    assert tok.family == "deberta-v2"
    slow = saved["deberta-v2"][0]
    assert tok.mask_token_id == slow.mask_token_id == tok.vocab_size  # appended after the pieces
    for t in TEXTS[:8]:
        assert tok.encode(t) == slow.encode(t), t
    d = tmp_path / "wp"
    d.mkdir()
    shutil.copy(wordpiece_file, d / "vocab.txt")
    tok = load_tokenizer(d, family="nezha")
    slow = saved["bert-uncased"][0]
    for t in TEXTS:
        assert tok.encode(t) == slow.encode(t), t


def test_api_shapes_and_decode(saved):
    tok = load_tokenizer(saved["roberta"][2])
    out = tok("Hello world!")
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    assert out["input_ids"].shape == (1, len(tok.encode("Hello world!")))
    assert tok.decode(out["input_ids"][0]) == "Hello world!"
    assert tok.decode(tok.encode("Café 😀 你好")) == "Café 😀 你好"
    same = tok(["abc", "abc"], padding=False)
    assert same["input_ids"].shape[0] == 2
    with pytest.raises(TokenizerError, match="padding"):
        tok(["a", "a much longer text"], padding=False)
    with pytest.raises(TokenizerError, match="text_pairs"):
        tok(["a", "b"], ["only one"])
    with pytest.raises(TokenizerError):
        tok([1, 2])
    for variant in ("deberta-v2", "bert-uncased"):
        for folder in saved[variant][2:]:
            t = load_tokenizer(folder)
            assert t.decode(t.encode("hello world")).lower() == "hello world"


# characters that stress each pipeline: whitespace kinds, controls, combining marks, CJK,
# emoji + modifiers, ligatures, case-folding oddities, and the special tokens themselves
_ALPHABET = list("abcXYZ 019.,;:!?'\"-()[]<>/\\#_\t\n\r") + list(
    "éàßÅøœ你好世界😀🎉👍🏽\u200b\u00a0\u3000\u0301ﬁİı\x00\x07\ufffd\u2028Ωж"
) + ["<mask>", "[MASK]", "<s>", "</s>", "[CLS]", "[SEP]", "[UNK]", "don't", " Hello", "world"]


@given(st.lists(st.sampled_from(_ALPHABET), max_size=20).map("".join))
def test_parity_random_text(saved, text):
    for variant, (slow, fast, native, js) in saved.items():
        for ref_tok, folder in ((slow, native), (fast, js)):
            ours = _loaded(folder).encode(text)
            assert ours == ref_tok.encode(text), (variant, folder.name, text)


_LOADED: dict = {}


def _loaded(folder):
    if folder not in _LOADED:
        _LOADED[folder] = load_tokenizer(folder)
    return _LOADED[folder]


# ----------------------------------------------------------------------------- bad input


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match=r"no tokenizer files in .*expected tokenizer.json"):
        load_tokenizer(tmp_path)
    _write_config(tmp_path, "roberta")
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(TokenizerError, match="missing merges.txt"):
        load_tokenizer(tmp_path)
    _write_config(tmp_path, "deberta-v2")
    with pytest.raises(TokenizerError, match="spm.model"):
        load_tokenizer(tmp_path)
    _write_config(tmp_path, "gpt2")
    with pytest.raises(TokenizerError, match="model_type 'gpt2'"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="unknown tokenizer family"):
        load_tokenizer(tmp_path, family="t5")


def test_corrupt_files(tmp_path, bpe_files):
    d = tmp_path / "bpe"
    d.mkdir()
    shutil.copy(bpe_files["roberta"] / "merges.txt", d / "merges.txt")
    (d / "vocab.json").write_text('{"a": 0, "b": ')
    with pytest.raises(TokenizerError, match="vocab.json"):
        load_tokenizer(d, family="roberta")
    (d / "vocab.json").write_text('["a", "b"]')
    with pytest.raises(TokenizerError, match="vocab.json.*mapping"):
        load_tokenizer(d, family="roberta")
    (d / "vocab.json").write_text('{"a": "zero"}')
    with pytest.raises(TokenizerError, match="vocab.json"):
        load_tokenizer(d, family="roberta")
    (d / "vocab.json").write_text('{"a": 0, "b": 1}')
    (d / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(TokenizerError, match="merges.txt, line 2"):
        load_tokenizer(d, family="roberta")

    s = tmp_path / "spm"
    s.mkdir()
    (s / "spm.model").write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    with pytest.raises(TokenizerError, match="spm.model"):
        load_tokenizer(s, family="deberta-v2")

    j = tmp_path / "json"
    j.mkdir()
    (j / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(j, family="bert")

    w = tmp_path / "wp"
    w.mkdir()
    (w / "vocab.txt").write_bytes(b"")
    with pytest.raises(TokenizerError, match="vocab.txt"):
        load_tokenizer(w)

    c = tmp_path / "cfg"
    c.mkdir()
    (c / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (c / "config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="config.json"):
        load_tokenizer(c)


# ----------------------------------------------------------------------------- folder metadata


def test_added_tokens_json_and_model_max_length(tmp_path, spm_file):
    """DeBERTa-v3 layout: [MASK] is not an spm piece, its id comes from added_tokens.json."""
    d = tmp_path / "v3"
    d.mkdir()
    shutil.copy(spm_file, d / "spm.model")
    (d / "added_tokens.json").write_text(json.dumps({"[MASK]": 300}))
    (d / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": False, "model_max_length": 10})
    )
    _write_config(d, "deberta-v2")
    tok = load_tokenizer(d)
    ref = transformers.DebertaV2Tokenizer.from_pretrained(str(d))
    assert tok.mask_token_id == ref.mask_token_id == 300
    assert tok.model_max_length == 10
    texts = ["Hello [MASK] world, this is a long sentence.", "short"]
    for t in texts:
        assert tok.encode(t) == ref.encode(t)
    # truncation=True without max_length cuts to model_max_length, as transformers does
    _assert_same(
        tok(texts), _hf_call(ref, texts, padding=True, truncation=True), "model_max_length"
    )
    assert tok(texts)["input_ids"].shape == (2, 10)
    assert tok(texts, truncation=False)["input_ids"].shape[1] > 10


def test_tokenizer_json_without_post_processor(saved, tmp_path):
    """A tokenizer.json with no post-processor gets the family template."""
    for variant in ("bert-uncased", "roberta", "deberta"):
        fast, js = saved[variant][1], saved[variant][3]
        d = tmp_path / variant
        shutil.copytree(js, d)
        spec = json.loads((d / "tokenizer.json").read_text())
        spec["post_processor"] = None
        (d / "tokenizer.json").write_text(json.dumps(spec))
        tok = load_tokenizer(d)
        assert tok.backend == "tokenizers"
        a = [p[0] for p in PAIRS]
        b = [p[1] for p in PAIRS]
        _assert_same(tok(a, b), _hf_call(fast, a, b, padding=True), variant)
        _assert_same(tok(TEXTS), _hf_call(fast, TEXTS, padding=True), variant)
