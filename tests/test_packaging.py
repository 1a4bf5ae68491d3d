"""The wheel installs kernels/ and calibration/ as intengine.kernels / intengine.calibration,
and nothing as a top-level ``kernels`` (which would collide with Hugging Face's package)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")  # build a copy: setuptools leaves build/ in the source tree
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    for name in ("intengine", "kernels", "calibration"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stderr[-2000:]}")
    (path,) = out.glob("intengine-*.whl")
    return path


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("intengine/kernels/requant.py", "intengine/kernels/cuda/requant.py",
                     "intengine/calibration/observers.py", "intengine/errors.py"):
        assert required in names, f"{required} missing from {wheel.name}"
    top = {n.split("/")[0] for n in names if not n.startswith("intengine-")}
    assert top == {"intengine"}, f"unexpected top-level entries: {sorted(top)}"


def test_installed_wheel_imports_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    deps = sysconfig.get_paths()["purelib"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), deps]))
    code = (
        "import intengine, intengine.kernels as k, intengine.calibration as c;"
        "assert intengine.__file__.startswith(%r), intengine.__file__;"
        "import importlib.util; assert importlib.util.find_spec('kernels') is None;"
        "print(sorted({op for op, _ in k.KERNELS})[:2], c.METHODS[0])" % str(site)
    )
    # -S: skip site-packages' .pth files, so the editable install of the checkout cannot answer
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "minmax" in proc.stdout
