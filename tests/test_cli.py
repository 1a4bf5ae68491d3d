"""The command line, as a script would use it: subprocesses, exit codes, stdout / stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CALIB = ["--calib-batches", "2", "--calib-batch-size", "2", "--calib-seq", "16"]


def cli(*args, cwd=None):
    env = dict(os.environ)
    env.setdefault("NUMBA_NUM_THREADS", "2")
    return subprocess.run([sys.executable, "-m", "intengine", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_help_and_usage_errors():
    r = cli("--help")
    assert r.returncode == 0
    for sub in ("bench", "quantize", "run", "export", "inspect"):
        assert sub in r.stdout
    assert cli().returncode == 2  # no subcommand: help + usage exit code
    r = cli("quantize", "roberta-tiny")  # missing -o
    assert r.returncode == 2 and "-o/--output" in r.stderr
    r = cli("export", "roberta-tiny", "--format", "fp16", "-o", "x.onnx")
    assert r.returncode == 2 and "invalid choice" in r.stderr


@pytest.fixture(scope="module")
def qdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "q"
    r = cli("quantize", "roberta-tiny", "-o", d, "--task", "sequence-classification", *CALIB)
    assert r.returncode == 0, r.stderr
    assert "saved QuantizedModel(roberta" in r.stdout
    assert (d / "graph.json").is_file() and (d / "model.safetensors").is_file()
    return d


def test_run_quantized_folder(qdir):
    r = cli("run", qdir, "--ids", "0 5 6 7 2", "--ids", "0 8 9 10 2", "--backend", "ref")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["shape"] == [2, 2] and len(doc["argmax"]) == 2
    r_cpu = cli("run", qdir, "--ids", "0 5 6 7 2", "--ids", "0 8 9 10 2")
    assert json.loads(r_cpu.stdout)["output"] == doc["output"]  # cpu == ref, bit for bit


def test_run_errors(qdir, tmp_path):
    r = cli("run", qdir, "--text", "hello")
    assert r.returncode == 1 and "needs a tokenizer" in r.stderr
    r = cli("run", qdir, "--ids", "0 x 2")
    assert r.returncode == 1 and "--ids" in r.stderr
    r = cli("run", tmp_path / "nowhere", "--ids", "0 5 2")
    assert r.returncode == 1 and "nowhere" in r.stderr
    r = cli("run", qdir, "--ids", "0 99999 2")
    assert r.returncode == 1 and "99999" in r.stderr


def test_export_and_run_onnx(qdir, tmp_path):
    out = tmp_path / "m.onnx"
    r = cli("export", qdir, "--format", "integer", "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    onnx_run = cli("run", "--onnx", out, "--ids", "0 5 6 7 2", "--ids", "0 8 9 10 2")
    ours = cli("run", qdir, "--ids", "0 5 6 7 2", "--ids", "0 8 9 10 2", "--backend", "ref")
    assert onnx_run.returncode == 0, onnx_run.stderr
    assert json.loads(onnx_run.stdout)["output"] == json.loads(ours.stdout)["output"]  # bit-exact export
    # QDQ needs the FP32 weights, which a quantized folder does not hold
    r = cli("export", qdir, "--format", "qdq", "-o", tmp_path / "q.onnx")
    assert r.returncode == 1 and "FP32" in r.stderr and not (tmp_path / "q.onnx").exists()
    # an unwritable target: clear error, nothing left behind
    bad = tmp_path / "missing-dir" / "m.onnx"
    r = cli("export", "roberta-tiny", "--format", "qdq", "-o", bad, *CALIB)
    assert r.returncode == 1 and "missing-dir" in r.stderr
    assert not bad.parent.exists() or not any(bad.parent.iterdir())


def test_inspect(qdir):
    r = cli("inspect", "nezha-cn-tiny", "--top", "3", "--seq", "16", *CALIB)
    assert r.returncode == 0, r.stderr
    assert "SQNR" in r.stdout and "final output" in r.stdout
    r = cli("inspect", qdir)
    assert r.returncode == 0 and "integer ops" in r.stdout


def test_bench_small(tmp_path):
    out = tmp_path / "rep"
    r = cli("bench", "deberta-v3-base-tiny", "--batch", "1", "--seq", "16", "--reps", "2",
            "--backends", "torch-fp32,intengine-cpu,ort-fp32,ort-qdq,ort-integer,ort-dynamic-int8",
            "--calib-batches", "2", "--calib-batch-size", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "intengine-cpu" in r.stdout and "command:" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    for key in ("versions", "cpu", "latency", "parity", "profile", "error_report", "command"):
        assert key in rep
    assert set(rep["latency"]) == {"torch-fp32", "intengine-cpu", "ort-fp32", "ort-qdq", "ort-integer",
                                   "ort-dynamic-int8"}
    assert rep["parity"]["intengine-cpu"]["cosine"] > 0.99
    # intengine's integer ONNX export computes exactly what intengine-cpu computes
    assert rep["parity"]["ort-integer"]["max_abs_err"] == rep["parity"]["intengine-cpu"]["max_abs_err"]
    assert (out / "report.md").read_text().startswith("# intengine bench")


def test_bench_bad_option():
    r = cli("bench", "roberta-tiny", "--backends", "tensorrt")
    assert r.returncode == 1 and "tensorrt" in r.stderr
    r = cli("bench", "no-such-model")
    assert r.returncode == 1 and "no-such-model" in r.stderr
