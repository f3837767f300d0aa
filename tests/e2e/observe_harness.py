"""Shared set-up of the HTTP-port observability tests: a real dropnet-server with tokens and an
HTTP port on free loopback ports, the dropnet CLI against it, and HTTP requests to its port."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ADMIN = "admin-token-for-observability-tests"
PREDICT = "predict-token-for-observability-tests"


class Server:
    """dropnet-server in a temporary directory; stopped (SIGTERM) by stop() or the with block."""

    def __init__(self, server_bin, cli_bin, extra=()):
        self.cli_bin = cli_bin
        self.dir = tempfile.mkdtemp(prefix="dropnet-observe-")
        self.log_path = os.path.join(self.dir, "server.log")
        env = dict(os.environ, DROPNET_ADMIN_TOKEN=ADMIN, DROPNET_PREDICT_TOKEN=PREDICT)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [server_bin, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--store",
             os.path.join(self.dir, "store"), "--threads", "1", "--workers", "1",
             "--drain-delay", "0", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        try:
            self.grpc_port = self._wait_port(r"\[server\] serving dropnet\.v1\b.*? \(port (\d+)\)")
            self.http_port = self._wait_port(r"serving HTTP on \S+ \(port (\d+)\)")
        except RuntimeError:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.http_port}"

    def _wait_port(self, pattern):
        deadline = time.time() + 30
        while time.time() < deadline:
            with open(self.log_path) as f:
                m = re.search(pattern, f.read())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        with open(self.log_path) as f:
            raise RuntimeError("the server did not start:\n" + f.read())

    def cli(self, *args, token=ADMIN, check=True):
        """Runs `dropnet args...` against the server; returns its stdout."""
        env = dict(os.environ, DROPNET_SERVER=f"127.0.0.1:{self.grpc_port}", DROPNET_TOKEN=token)
        r = subprocess.run([self.cli_bin, *args], env=env, capture_output=True, text=True,
                           timeout=300)
        if check and r.returncode != 0:
            raise RuntimeError(f"dropnet {' '.join(args)}: {r.returncode}\n{r.stderr}")
        return r

    def http(self, path, token=PREDICT, body=None):
        """(status, body bytes, headers) of GET path, or POST with a JSON body."""
        headers = {"Authorization": "Bearer " + token} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers

    def api(self, path, body=None):
        status, data, _ = self.http(path, body=body)
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}: {data[:500]}")
        return json.loads(data)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def digits_model(server, source_dir, epochs=2):
    """Creates model 'digits' (examples/digits_mlp.json), uploads data/digits.csv as data set
    'digits' and trains it `epochs` epochs with a validation split."""
    server.cli("models", "create", "digits", "--spec",
               os.path.join(source_dir, "examples/digits_mlp.json"))
    server.cli("data", "upload", "digits", os.path.join(source_dir, "data/digits.csv"))
    server.cli("train", "digits", "--data", "digits", "--epochs", str(epochs), "--standardize",
               "--seed", "1", "--validation-split", "0.2")


def digits_rows(source_dir, n, with_labels=False):
    """The first n rows of data/digits.csv (header included), without the label column."""
    with open(os.path.join(source_dir, "data/digits.csv")) as f:
        lines = [next(f) for _ in range(n + 1)]
    if with_labels:
        return "".join(lines)
    return "".join(",".join(line.rstrip("\n").split(",")[:-1]) + "\n" for line in lines)
