"""The quantize-and-benchmark job as a plain script (the same job as ``intengine bench``).

    python bench/quantize_and_benchmark.py [MODEL] [--batch 8] [--seq 128] [--out DIR] ...

MODEL is a Hugging Face checkpoint folder or a preset (default ``roberta-base``).  It loads the
FP32 model, calibrates and quantizes it, checks parity against FP32 and times torch FP32,
intengine's integer ``cpu`` runtime (and ``cuda`` on a GPU), ONNX Runtime FP32, ORT on
intengine's QDQ and integer-only exports and ORT's own ``quantize_dynamic``, interleaved in one
run.  All options: ``--help``.  This file is a thin wrapper: the job lives in
``intengine/bench.py`` and the options in ``intengine/cli.py``.
"""

import sys

from intengine.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
