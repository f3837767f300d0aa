"""The package as people install it: `pip install ./python` into a venv that sees Debian's
packages, offline, and `cmake --install` where /usr/bin/python3 finds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import BUILD, SOURCE

CHECK = ("import dropnet, dropnet.v1.service_pb2_grpc as g; "
         "assert hasattr(g, 'DropnetStub'); print(dropnet.__file__)")


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def test_pip_install_in_a_venv_offline(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    # pip builds from a copy of the source tree; proto/ is one level up, as in the repository.
    tree = tmp_path / "src"
    shutil.copytree(SOURCE / "python", tree / "python",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
    shutil.copytree(SOURCE / "proto", tree / "proto")
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", str(tree / "python")],
                         env=_clean_env(), capture_output=True, text=True, cwd=tmp_path)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    out = subprocess.run([str(venv / "bin" / "python"), "-c", CHECK], env=_clean_env(),
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(venv) in out.stdout
    assert not list((tree / "python" / "dropnet" / "v1").glob("*_pb2*.py"))  # nothing generated in the tree


def test_cmake_install_puts_it_on_the_interpreters_path(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("no cmake")
    prefix = tmp_path / "usr"
    subprocess.run([cmake, "--install", str(BUILD), "--prefix", str(prefix)], check=True,
                   capture_output=True)
    found = list(prefix.glob("lib/python3*/dist-packages/dropnet/v1/service_pb2_grpc.py"))
    assert found, list(prefix.rglob("dropnet"))
    site = found[0].parents[2]
    out = subprocess.run([sys.executable, "-c", CHECK], env=_clean_env(PYTHONPATH=str(site)),
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(site) in out.stdout
