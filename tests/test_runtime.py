"""Runtime buffer planning: planned outputs are reused only when lifetimes allow, views keep their
buffers alive, results never alias a later call's buffers; every call stays bit-exact with ``ref``."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

import intengine as ie
from intengine import ir
from intengine.calibrate import random_batches
from intengine.kernels.requant import quantize_multiplier
from intengine.runtime import MAX_PLANS, Executor


def _view_graph() -> ir.Graph:
    """``a = rq(x)``, ``r = reshape(a)`` (a view), ``b = rq'(x)``, ``y = r + b``: ``a`` dies at the
    reshape, but its buffer must stay ``r``'s until the add, so ``b`` may not reuse it."""
    m1, s1 = quantize_multiplier(0.5)
    m2, s2 = quantize_multiplier(0.25)
    values = (ir.Value("input_ids", "i64", ("B", "T")), ir.Value("a", "i8", ("B", "T")),
              ir.Value("r", "i8", ("B", "T", 1)), ir.Value("b", "i8", ("B", "T", 1)),
              ir.Value("y", "i32", ("B", "T", 1)), ir.Value("out", "f32", ("B", "T", 1)))
    nodes = (
        ir.Node("requantize", ("input_ids",), ("a",), (("m_i32", m1), ("shift", s1), ("out_bits", 8)), name="a"),
        ir.Node("reshape", ("a",), ("r",), (("shape", ("B", "T", 1)),), name="r"),
        ir.Node("reshape", ("input_ids",), ("x3",), (("shape", ("B", "T", 1)),), name="x3"),
        ir.Node("requantize", ("x3",), ("b",), (("m_i32", m2), ("shift", s2), ("out_bits", 8)), name="b"),
        ir.Node("rescale_add", ("r", "b"), ("y",), (("m_a", 1 << 30), ("shift_a", 30), ("m_b", 1 << 30),
                                                  ("shift_b", 29), ("out_bits", 32)), name="y"),
        ir.Node("dequantize", ("y",), ("out",), (("scale", 0.5), ("axis", None)), name="out"),
    )
    values = values + (ir.Value("x3", "i64", ("B", "T", 1)),)
    return ir.Graph("integer", ("input_ids",), ("out",), nodes, values, {})


def test_a_view_keeps_its_buffer_alive():
    g = _view_graph()
    cpu, ref = Executor(g, "cpu"), Executor(g, "ref")
    x = np.arange(-40, 40, dtype=np.int64).reshape(4, 20) * 3
    for _ in range(3):  # the first call records and plans, the next ones use the plan
        np.testing.assert_array_equal(cpu.run(x), ref.run(x))
    plan = cpu._plans[(4, 20)]
    planned = [n.label for n, o in zip(g.nodes, plan.outs) if o is not None]
    assert planned == ["a", "b", "y"]
    a_buf, b_buf = plan.outs[0], plan.outs[3]
    assert not np.shares_memory(a_buf, b_buf)  # a's buffer is still viewed by r when b is written


@pytest.fixture(scope="module")
def nezha():
    m = ie.load_fp32("nezha-cn-tiny")
    q = ie.quantize(m, random_batches(m, 2, 2, 12))
    return m, q


def test_plans_reuse_memory_and_results_are_fresh(nezha):
    m, q = nezha
    ex = Executor(q.graph, "cpu")
    batch = random_batches(m, 1, 3, 12, seed=5)[0]
    want = Executor(q.graph, "ref").run(**batch)
    outs = [ex.run(**batch) for _ in range(3)]
    for o in outs:
        np.testing.assert_array_equal(o, want)
    assert not np.shares_memory(outs[1], outs[2])
    plan = ex._plans[(3, 12)]
    sizes = sum(o.nbytes for o in plan.outs if o is not None)
    assert 0 < plan.nbytes < sizes  # buffers are shared between values with disjoint lifetimes
    assert ex.planned_bytes(3, 12) == plan.nbytes and ex.planned_bytes(3, 13) is None


def test_many_shapes_keep_a_bounded_number_of_plans(nezha):
    m, q = nezha
    ex, ref = Executor(q.graph, "cpu"), Executor(q.graph, "ref")
    rng = np.random.default_rng(0)
    for t in list(range(4, 4 + MAX_PLANS + 2)) + [4, 5]:
        ids = rng.integers(5, 100, (2, t))
        np.testing.assert_array_equal(ex.run(ids), ref.run(ids))
        np.testing.assert_array_equal(ex.run(ids), ref.run(ids))
    assert len(ex._plans) == MAX_PLANS


def test_concurrent_calls_share_an_executor_safely(nezha):
    m, q = nezha
    ex, ref = Executor(q.graph, "cpu"), Executor(q.graph, "ref")
    rng = np.random.default_rng(1)
    inputs = [rng.integers(5, 100, (2, 10)) for _ in range(4)]
    wants = [ref.run(ids) for ids in inputs]
    errors = []

    def work(k):
        for _ in range(3):
            got = ex.run(inputs[k])
            if not np.array_equal(got, wants[k]):
                errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_planning_can_be_switched_off(nezha):
    m, q = nezha
    ex = Executor(q.graph, "cpu", plan_buffers=False)
    ids = np.arange(5, 25).reshape(2, 10)
    np.testing.assert_array_equal(ex.run(ids), Executor(q.graph, "ref").run(ids))
    assert ex.planned_bytes(2, 10) is None and not ex._plans


def test_the_recording_call_keeps_no_outputs_alive(nezha):
    """The first call at a shape records shapes and dtypes only: intermediates still die at their
    last use (holding them would make that call's peak memory the sum of all values)."""
    m, q = nezha
    ex = Executor(q.graph, "cpu")
    record: list = []
    ex._execute(ex._inputs(np.arange(5, 25).reshape(2, 10), None, None), record=record)
    assert len(record) == len(ex.graph.nodes)
    assert not any(isinstance(part, np.ndarray) for rec in record for part in rec)


def test_executor_hands_kernels_read_only_copies_of_constants():
    # kernels validate read-only constants once per layer (memo_frozen); the graph's own arrays stay as they were
    model = ie.load_fp32("roberta-tiny")
    qm = ie.quantize(model, random_batches(model, 1, 2, 8))
    writeable = {k for k, v in qm.graph.constants.items() if v.flags.writeable}
    ex = Executor(qm.graph, "cpu")
    x = random_batches(model, 1, 2, 8, seed=3)[0]
    y1 = ex.run(x["input_ids"], x["attention_mask"], x["token_type_ids"])
    y2 = ex.run(x["input_ids"], x["attention_mask"], x["token_type_ids"])
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, Executor(qm.graph, "ref").run(x["input_ids"], x["attention_mask"],
                                                                    x["token_type_ids"]))
    assert {k for k, v in qm.graph.constants.items() if v.flags.writeable} == writeable
    node = next(n for n in qm.graph.nodes if n.op == "linear")
    m = ex._c(node.attr("m_i32"))
    assert not m.flags.writeable and m.base is None


def test_residual_add_and_layernorm_fuse_bit_identically():
    from intengine.lower import fuse_add_layernorm

    model = ie.load_fp32("roberta-tiny")
    qm = ie.quantize(model, random_batches(model, 1, 2, 8))
    fused = fuse_add_layernorm(qm.graph)
    n_pairs = sum(1 for n in qm.graph.nodes if n.op == "layernorm" and any(
        p.op == "rescale_add" and p.outputs[0] == n.inputs[0] for p in qm.graph.nodes))
    assert n_pairs > 0
    assert sum(n.op == "add_layernorm" for n in fused.nodes) == n_pairs
    assert len(fused.nodes) == len(qm.graph.nodes) - n_pairs
    assert Executor(qm.graph, "cpu").graph.nodes == fused.nodes
    x = random_batches(model, 1, 3, 8, seed=4)[0]
    args = (x["input_ids"], x["attention_mask"], x["token_type_ids"])
    want = Executor(qm.graph, "ref", fuse=False).run(*args)
    for backend in ("ref", "cpu"):
        np.testing.assert_array_equal(Executor(qm.graph, backend).run(*args), want)
    # a sum with a second reader (or a graph output) stays a rescale_add: it must be materialized
    add = next(n for n in qm.graph.nodes if n.op == "rescale_add" and n.outputs[0] not in qm.graph.outputs
               and any(c.op == "layernorm" for c in qm.graph.consumers(n.outputs[0])))
    g2 = ir.Graph(qm.graph.stage, qm.graph.inputs, qm.graph.outputs + (add.outputs[0],), qm.graph.nodes,
                  qm.graph.values, qm.graph.constants)
    assert sum(n.op == "add_layernorm" for n in fuse_add_layernorm(g2).nodes) == n_pairs - 1


@pytest.mark.parametrize("preset", ["deberta-base-tiny", "deberta-v3-base-tiny"])
def test_deberta_score_terms_fuse_bit_identically(preset):
    """Each layer's two gathers, transpose and two rescale_adds become one ``rel_scores``; the
    fused program equals the unfused one bit for bit (ref and cpu), also past the captured
    relative tables (extended indices); a term with a second reader is left unfused."""
    from intengine.lower import fuse_rel_scores

    model = ie.load_fp32(preset, task="token-classification")
    qm = ie.quantize(model, random_batches(model, 1, 2, 16))
    fused = fuse_rel_scores(qm.graph)
    layers = model.config.num_hidden_layers
    assert sum(n.op == "rel_scores" for n in fused.nodes) == layers
    assert not any(n.op in ("gather", "rescale_add") and ".attn.scores" in n.outputs[0] for n in fused.nodes)
    assert len(fused.nodes) == len(qm.graph.nodes) - 4 * layers
    ex = Executor(qm.graph, "cpu")
    assert [n for n in ex.graph.nodes if n.op == "rel_scores"] == [n for n in fused.nodes if n.op == "rel_scores"]
    # the products with the relative tables are computed only over the distances a length reads
    assert len(ex._windows) == 2 * layers
    x = random_batches(model, 1, 2, 16, seed=4)[0]
    env = ex.trace(x["input_ids"], x["attention_mask"], x["token_type_ids"])
    full = qm.graph.constants[next(n for n in qm.graph.nodes if n.outputs[0] == "layer0.attn.c2p_all").inputs[1]]
    lo, hi, _ = ex._windows["layer0.attn.c2p_all"](16)
    assert env["layer0.attn.c2p_all"].shape[-1] == hi - lo + 1 <= full.shape[-2]
    if preset == "deberta-base-tiny":  # clamped distances: 2·16 - 1 of the 2·64 columns
        assert (hi - lo + 1, full.shape[-2]) == (31, 128)
    for t in (16, model.config.max_position_embeddings + 5):
        longer = dataclasses.replace(model.config, max_position_embeddings=t)
        x = random_batches(longer, 1, 3, t, seed=4)[0]
        args = (x["input_ids"], x["attention_mask"], x["token_type_ids"])
        want = Executor(qm.graph, "ref", fuse=False).run(*args)
        for backend in ("ref", "cpu"):
            np.testing.assert_array_equal(Executor(qm.graph, backend).run(*args), want)
    c2p = next(n for n in qm.graph.nodes if n.op == "gather")
    g2 = ir.Graph(qm.graph.stage, qm.graph.inputs, qm.graph.outputs + (c2p.outputs[0],), qm.graph.nodes,
                  qm.graph.values, qm.graph.constants)
    assert sum(n.op == "rel_scores" for n in fuse_rel_scores(g2).nodes) == layers - 1


def test_mask_fill_rows_equal_the_broadcast_product():
    """The row path of ``mask_fill`` (masks constant over trailing axes) is ``x·mask`` exactly,
    for bool and u8 masks, with and without ``out``; other patterns take the product."""
    from intengine.runtime import _mask_fill

    rng = np.random.default_rng(0)
    cases = [((3, 4, 6, 6), (3, 1, 6, 1), np.uint8), ((3, 6, 8), (3, 6, 1), np.int8), ((2, 3, 4, 5), (2, 1, 1, 5), np.int32),
             ((5,), (5,), np.int8), ((2, 3), (1, 1), np.int16), ((2, 1, 4, 1), (2, 1, 4, 1), np.uint8)]
    for xs, ms, dt in cases:
        x = rng.integers(-100, 100, xs).astype(dt)
        m = rng.integers(0, 2, ms).astype(bool)
        want = np.multiply(x, m, dtype=x.dtype)
        for mask in (m, m.astype(np.uint8)):
            got = _mask_fill(x, mask)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want, err_msg=str(xs))
            out = np.full(xs, 7, dt)
            assert _mask_fill(x, mask, out) is out
            np.testing.assert_array_equal(out, want)
