"""The ``intengine`` command line (``python -m intengine`` works too).

Exit codes: 0 success, 1 an intengine error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import pathlib
import runpy
import sys

from .errors import IntengineError

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _cmd_bench(args: argparse.Namespace) -> int:
    script = REPO_ROOT / "bench" / "kernels.py"
    if not script.exists():
        raise IntengineError(f"the kernel benchmark {script} is not there: run from a source checkout (pip install -e .)")
    print(
        "intengine bench: the full quantize-and-benchmark job on a model lands with the benchmark issue;\n"
        "until then this runs the integer kernel benchmark (bench/kernels.py).",
        flush=True,
    )
    argv = [str(script)] + (["--quick"] if args.quick else [])
    old = sys.argv
    try:
        sys.argv = argv
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intengine",
        description="Quantize transformer encoders to integer-only programs, run and benchmark them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="benchmark intengine's integer kernels (model benchmark: coming)")
    bench.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except IntengineError as exc:
        print(f"intengine: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
