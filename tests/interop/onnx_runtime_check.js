// Runs every model the export test wrote in ONNX Runtime (onnxruntime-node) and checks that its
// outputs equal dropnet's Predict (eval) outputs to 1e-5 relative.
// Usage: node onnx_runtime_check.js EXPORT_DIR (with NODE_PATH reaching onnxruntime-node).
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

function softmaxRows(values, cols) {
  const out = new Float64Array(values.length);
  for (let r = 0; r < values.length / cols; r++) {
    let max = -Infinity;
    for (let c = 0; c < cols; c++) max = Math.max(max, values[r * cols + c]);
    let sum = 0;
    for (let c = 0; c < cols; c++) sum += (out[r * cols + c] = Math.exp(values[r * cols + c] - max));
    for (let c = 0; c < cols; c++) out[r * cols + c] /= sum;
  }
  return out;
}

async function run(session, shape, values) {
  const x = new ort.Tensor('float32', Float32Array.from(values), shape);
  const result = await session.run({x});
  return result.y;
}

async function main() {
  const dir = process.argv[2];
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  let failures = 0;
  const fail = (msg) => { console.error('FAIL ' + msg); failures++; };
  for (const entry of manifest) {
    const session = await ort.InferenceSession.create(path.join(dir, entry.file));
    const y = await run(session, entry.input_shape, entry.input);
    const cols = y.dims[1];
    const got = entry.softmax_after ? softmaxRows(y.data, cols) : Array.from(y.data);
    // ONNX Runtime removes Dropout nodes when it loads a model, whatever their training_mode:
    // train-mode files give the eval outputs too.
    if (got.length !== entry.expected.length) fail(`${entry.file}: ${got.length} outputs`);
    entry.expected.forEach((want, k) => {
      if (Math.abs(got[k] - want) > 1e-5 * Math.abs(want) + 1e-7) {
        fail(`${entry.file} output ${k}: ONNX Runtime ${got[k]}, dropnet ${want}`);
      }
    });
    console.log(`${entry.file} (${entry.mode}): ${got.length} outputs equal dropnet's to 1e-5`);
  }
  if (failures) process.exit(1);
}

main().catch((e) => { console.error(e); process.exit(1); });
