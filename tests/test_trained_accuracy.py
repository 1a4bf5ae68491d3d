"""Trained accuracy (issue 4's target): integer inference keeps a trained classifier's accuracy.

For each family a tiny sequence classifier (hidden 32, 4 heads, 2 layers; the family's own
options: NEZHA's relative window, DeBERTa's c2p|p2c relative attention without absolute
positions, DeBERTa-v3-style log buckets + shared keys + LayerNorm'd relative table + the nGiE conv)
is trained with torch on a synthetic task the test makes:

    majority: a row is [CLS] + 7..15 tokens; 1, 3 or 5 of them come from group A or group B
    (the rest is filler, positions shuffled); label = more A than B.

Training is a few seconds of Adam with fixed seeds; then the model is quantized with min-max
calibration on training batches and run on the ``cpu`` backend over a held-out split.  Targets:
FP32 accuracy >= 0.85 (the task was learned), integer accuracy within 1 point of FP32, argmax
agreement between integer and FP32 >= 98 %.  The measured figures are attached to the test report
(``record_property``) and printed with ``-s``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from intengine import ir
from intengine.models import get_family, init_weights
from intengine.quantize import quantize

VOCAB, MAX_LEN = 48, 16
N_TRAIN, N_TEST, BATCH, EPOCHS, LR = 512, 400, 32, 6, 3e-3
MIN_FP32_ACC, MAX_ACC_DROP, MIN_AGREEMENT = 0.85, 0.01, 0.98

_TINY = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
             vocab_size=VOCAB, hidden_act="gelu", num_labels=2)
CONFIGS = {
    "roberta": dict(_TINY, model_type="roberta", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    max_position_embeddings=MAX_LEN + 2, type_vocab_size=1),
    "nezha": dict(_TINY, model_type="nezha", pad_token_id=0, max_position_embeddings=MAX_LEN,
                  max_relative_position=8, type_vocab_size=2),
    "deberta": dict(_TINY, model_type="deberta", pad_token_id=0, max_position_embeddings=MAX_LEN,
                    relative_attention=True, pos_att_type="c2p|p2c", position_biased_input=False,
                    max_relative_positions=-1, type_vocab_size=0),
    "deberta-v2": dict(_TINY, model_type="deberta-v2", pad_token_id=0,
                       max_position_embeddings=MAX_LEN, relative_attention=True,
                       pos_att_type="p2c|c2p", position_biased_input=False, position_buckets=8,
                       norm_rel_ebd="layer_norm", share_att_key=True, conv_kernel_size=3,
                       conv_act="gelu", type_vocab_size=0),
}


def majority_task(n: int, seed: int, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask, labels)``: rows of 8..16 tokens padded to MAX_LEN."""
    rng = np.random.default_rng(seed)
    pool = [i for i in range(VOCAB) if i != pad]
    cls, group_a, group_b, filler = pool[0], pool[1:7], pool[7:13], pool[13:]
    ids = np.full((n, MAX_LEN), pad, np.int64)
    mask = np.zeros((n, MAX_LEN), np.int64)
    labels = np.zeros(n, np.int64)
    for r in range(n):
        length = int(rng.integers(8, MAX_LEN + 1))
        k = int(rng.choice([1, 3, 5]))  # odd: never a tie
        n_a = int(rng.integers(0, k + 1))
        body = np.concatenate([rng.choice(group_a, n_a), rng.choice(group_b, k - n_a),
                               rng.choice(filler, length - 1 - k)])
        rng.shuffle(body)
        ids[r, 0], ids[r, 1:length] = cls, body
        mask[r, :length] = 1
        labels[r] = int(n_a > k - n_a)
    return ids, mask, labels


@pytest.fixture(scope="module", autouse=True)
def two_torch_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def train(family: str, ids: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> torch.nn.Module:
    """A freshly initialised classifier trained with Adam (fixed seeds); returned in eval mode."""
    hf = CONFIGS[family]
    fam = get_family(hf["model_type"], "test config")
    m = fam.build(fam.Config.from_hf(dict(hf), "test config"), "sequence-classification", 2)
    init_weights(m, 0, std=0.02)
    m.requires_grad_(True).train()
    opt = torch.optim.Adam(m.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    x, am, y = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)
    for _ in range(EPOCHS):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), BATCH):
            idx = perm[i:i + BATCH]
            loss = torch.nn.functional.cross_entropy(m(x[idx], am[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.requires_grad_(False)
    return m.eval()


@pytest.mark.parametrize("family", list(CONFIGS))
def test_integer_accuracy_matches_fp32(family, record_property):
    pad = CONFIGS[family]["pad_token_id"]
    tr_ids, tr_mask, tr_y = majority_task(N_TRAIN, seed=1, pad=pad)
    te_ids, te_mask, te_y = majority_task(N_TEST, seed=2, pad=pad)
    m = train(family, tr_ids, tr_mask, tr_y)
    with torch.no_grad():
        fp32_logits = m(torch.from_numpy(te_ids), torch.from_numpy(te_mask)).numpy()

    calib = [{"input_ids": tr_ids[i:i + BATCH], "attention_mask": tr_mask[i:i + BATCH],
              "token_type_ids": np.zeros_like(tr_ids[i:i + BATCH])}
             for i in range(0, 8 * BATCH, BATCH)]
    qm = quantize(m, calib)
    ir.verify_integer(qm.graph)
    int_logits = qm.run(te_ids, te_mask, np.zeros_like(te_ids), backend="cpu")

    p_fp, p_int = fp32_logits.argmax(-1), int_logits.argmax(-1)
    acc_fp, acc_int = float(np.mean(p_fp == te_y)), float(np.mean(p_int == te_y))
    agree = float(np.mean(p_fp == p_int))
    figures = f"{family}: fp32 acc {acc_fp:.4f}, int acc {acc_int:.4f}, agreement {agree:.4f}"
    print(figures)
    record_property("fp32_accuracy", acc_fp)
    record_property("int_accuracy", acc_int)
    record_property("agreement", agree)
    assert acc_fp >= MIN_FP32_ACC, f"the FP32 model did not learn the task: {figures}"
    assert abs(acc_int - acc_fp) <= MAX_ACC_DROP, figures
    assert agree >= MIN_AGREEMENT, figures
