"""Fixtures: a real dropnet-server started from the build tree (DROPNET_BUILD_DIR, default
build/), a client of it, and a digits model trained once for the tests that need one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import pytest

SOURCE = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("DROPNET_BUILD_DIR", SOURCE / "build")).resolve()
SERVER_BIN = BUILD / "bin" / "dropnet-server"
CLI_BIN = BUILD / "bin" / "dropnet"
TLS_DIR = SOURCE / "tests" / "data" / "tls"

if str(BUILD / "python") not in sys.path:
    sys.path.insert(0, str(BUILD / "python"))

import dropnet  # noqa: E402


class Server:
    """A dropnet-server process on a free loopback port, its log in `dir`/server.log."""

    def __init__(self, dir: Path, *flags: str) -> None:
        self.dir = dir
        (dir / "root").mkdir(parents=True, exist_ok=True)
        shutil.copy(SOURCE / "data" / "digits.csv", dir / "root" / "digits.csv")
        self.log_path = dir / "server.log"
        self._log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DROPNET_")}
        self.process = subprocess.Popen(
            [str(SERVER_BIN), "--listen", "127.0.0.1:0", "--store", str(dir / "store"),
             "--data-root", str(dir / "root"), "--threads", "1", "--max-samples", "500",
             *flags], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.port = self._wait_for_port()
        self.address = f"127.0.0.1:{self.port}"

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(r"\(port (\d+)\)", self.log())
            if m:
                return int(m.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"dropnet-server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not SERVER_BIN.exists():
        pytest.fail(f"{SERVER_BIN} is missing: build first (cmake --build build)")
    s = Server(tmp_path_factory.mktemp("server"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[dropnet.Client]:
    with dropnet.Client(server.address, token="") as c:
        yield c


def load_digits() -> tuple:
    data = np.loadtxt(SOURCE / "data" / "digits.csv", delimiter=",", skiprows=1)
    return data[:, :-1], data[:, -1].astype(np.int64)


@pytest.fixture(scope="session")
def digits(client: dropnet.Client) -> tuple:
    """Model 'digits' (examples/digits_mlp.json) trained 3 epochs on data set 'digits'; returns
    the features (float64) and labels of data/digits.csv."""
    client.create_model("digits", SOURCE / "examples" / "digits_mlp.json")
    client.upload("digits", SOURCE / "data" / "digits.csv")
    client.train("digits", "digits", epochs=3, standardize=True, seed=1).wait()
    return load_digits()


def run_cli(server: Server, *args: str, token: Optional[str] = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DROPNET_SERVER=server.address)
    env.pop("DROPNET_TOKEN", None)
    if token:
        env["DROPNET_TOKEN"] = token
    return subprocess.run([str(CLI_BIN), *args], env=env, capture_output=True, text=True,
                          timeout=300)


__all__: List[str] = ["Server", "run_cli", "load_digits", "SOURCE", "BUILD", "TLS_DIR"]
