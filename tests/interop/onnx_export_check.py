#!/usr/bin/python3
"""Runs onnx.checker (python3-onnx, full check with shape inference) on every file the export
test wrote, and checks that each has its Dropout nodes with the training_mode of its export mode.

Usage: onnx_export_check.py DIR  (DIR holds manifest.json and the .onnx files)."""
import json
import os
import sys

import onnx
from onnx import numpy_helper


def main():
    folder = sys.argv[1]
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    if not manifest:
        sys.exit("no exported files in " + folder)
    for entry in manifest:
        path = os.path.join(folder, entry["file"])
        onnx.checker.check_model(path, full_check=True)
        model = onnx.load(path)
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        dropouts = [n for n in model.graph.node if n.op_type == "Dropout"]
        for node in dropouts:
            training = bool(inits[node.input[2]])
            if training != (entry["mode"] == "train"):
                sys.exit(f"{entry['file']}: {node.name} has training_mode {training}")
        print(f"{entry['file']}: checker passed, {len(model.graph.node)} nodes, "
              f"{len(dropouts)} Dropout nodes")


if __name__ == "__main__":
    main()
