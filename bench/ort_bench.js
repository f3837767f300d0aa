#!/usr/bin/env node
// ONNX Runtime side of bench/compare_torch.py: times one exported model on the CPU provider.
//
//   NODE_PATH=build/peers/node_modules node bench/ort_bench.js MODEL.onnx INPUT.f32 \
//       --threads 2 --min-time 1 [--copies 100]
//
// INPUT.f32 holds 256 rows of 784 float32 values. Prints one JSON object: eval_b1 (seconds per
// call of batch 1) and eval_b256 (samples/s), or with --copies N the number of distinct rows the
// model returns for N copies of the first input row (1 when the model is deterministic).
'use strict';
const fs = require('fs');
const ort = require('onnxruntime-node');

function Arg(name, def) {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : def;
}

async function Timed(fn, minTime) {
  await fn();
  let n = 0;
  const start = process.hrtime.bigint();
  for (;;) {
    await fn();
    n++;
    const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
    if (elapsed >= minTime) return elapsed / n;
  }
}

async function Main() {
  const [model, input] = process.argv.slice(2, 4);
  const threads = Arg('--threads', 2), minTime = Arg('--min-time', 1), copies = Arg('--copies', 0);
  const session = await ort.InferenceSession.create(model, {
    intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential'});
  const buf = fs.readFileSync(input);
  const rows = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  const name = session.inputNames[0];
  const feed = (n, data) => ({[name]: new ort.Tensor('float32', data, [n, 784])});
  if (copies > 0) {
    const data = new Float32Array(copies * 784);
    for (let i = 0; i < copies; i++) data.set(rows.subarray(0, 784), i * 784);
    const out = (await session.run(feed(copies, data)))[session.outputNames[0]].data;
    const width = out.length / copies, distinct = new Set();
    for (let i = 0; i < copies; i++) distinct.add(Array.from(out.subarray(i * width, (i + 1) * width)).join(','));
    console.log(JSON.stringify({copies, distinct_rows: distinct.size}));
    return;
  }
  const f1 = feed(1, rows.slice(0, 784)), f256 = feed(256, rows.slice(0, 256 * 784));
  const b1 = await Timed(() => session.run(f1), minTime);
  const b256 = await Timed(() => session.run(f256), minTime);
  console.log(JSON.stringify({eval_b1: b1, eval_b256: 256 / b256}));
}

Main().catch((e) => { console.error(e); process.exit(1); });
