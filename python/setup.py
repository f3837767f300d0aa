"""Builds the dropnet Python package: the sources here plus the dropnet.v1 modules that protoc
and grpc_python_plugin generate from ../proto (or $DROPNET_PROTO_DIR) while building.

    python3 -m venv --system-site-packages .venv && .venv/bin/pip install ./python

Runtime dependencies are Debian's python3-grpcio, python3-protobuf and python3-numpy (they are
not declared to pip, so that it never tries to fetch them); building needs protobuf-compiler and
protobuf-compiler-grpc.
"""

import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ["dropnet/v1/model.proto", "dropnet/v1/service.proto"]


def proto_dir():
    for d in (os.environ.get("DROPNET_PROTO_DIR"), os.path.join(HERE, "..", "proto")):
        if d and all(os.path.isfile(os.path.join(d, p)) for p in PROTOS):
            return os.path.abspath(d)
    raise SystemExit("dropnet: cannot find proto/dropnet/v1/*.proto next to python/; set "
                     "DROPNET_PROTO_DIR to the folder that holds dropnet/v1/")


def tool(name, env):
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        raise SystemExit(f"dropnet: {name} not found (apt-get install protobuf-compiler "
                         f"protobuf-compiler-grpc), or set {env}")
    return path


class BuildWithProtos(build_py):
    """Generates dropnet/v1/*_pb2*.py into the build tree."""

    def run(self):
        super().run()
        src = proto_dir()
        out = os.path.abspath(self.build_lib)
        protoc = tool("protoc", "PROTOC")
        plugin = tool("grpc_python_plugin", "GRPC_PYTHON_PLUGIN")
        subprocess.check_call([protoc, "-I", src, f"--python_out={out}"] + PROTOS, cwd=src)
        subprocess.check_call([protoc, "-I", src, f"--grpc_out={out}",
                               f"--plugin=protoc-gen-grpc={plugin}", "dropnet/v1/service.proto"],
                              cwd=src)


setup(
    name="dropnet",
    version="0.1.0",
    description="Python client of dropnet: neural networks with dropout over gRPC, and their "
                "Monte-Carlo dropout uncertainty",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["dropnet", "dropnet.v1"],
    package_data={"dropnet": ["py.typed"]},
    python_requires=">=3.9",
    cmdclass={"build_py": BuildWithProtos},
    zip_safe=False,
)
