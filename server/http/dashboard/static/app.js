// The dropnet dashboard: models and their training curves, an evaluation view (eval mode beside
// Monte-Carlo dropout, with a reliability diagram) and an uncertainty explorer. It calls the
// server's /api endpoints (dropnet.v1 calls in protobuf's JSON mapping) with the token kept in
// this tab's sessionStorage, sent as an Authorization header.
'use strict';

const TOKEN_KEY = 'dropnet-token';
const state = {view: 'models', models: [], selected: null, charts: {}, poll: null};

// ---- helpers ----

const $ = (sel, root = document) => root.querySelector(sel);
// Numbers from the JSON mapping: int64 comes as a string, NaN and Infinity as strings too.
const num = (v) => (v === undefined || v === null ? NaN : Number(v));
const fmt = (v, digits = 4) => {
  const x = num(v);
  return Number.isFinite(x) ? x.toFixed(digits) : String(x);
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// A cell that shows `value` formatted and keeps it exactly in data-value.
function numCell(tag, value, attrs = {}, digits = 4) {
  return el(tag, {...attrs, 'data-value': String(num(value)), text: fmt(value, digits)});
}

function setStatus(text, error = false) {
  const s = $('#status');
  delete s.dataset.fromRefresh;
  s.textContent = text;
  s.classList.toggle('error', error);
}

async function api(path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  const init = {headers};
  if (body !== undefined) {
    init.method = 'POST';
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`HTTP ${r.status}: ${data.error || r.statusText}`);
  return data;
}

function chart(id, config) {
  const old = state.charts[id];
  if (old) old.destroy();
  config.options = {animation: false, responsive: true, maintainAspectRatio: false,
                    ...(config.options || {})};
  state.charts[id] = new Chart(document.getElementById(id), config);
  return state.charts[id];
}

function fillSelect(select, names) {
  const keep = select.value;
  select.replaceChildren(...names.map((n) => el('option', {value: n, text: n})));
  if (names.includes(keep)) select.value = keep;
}

// ---- models and training curves ----

async function loadModels() {
  const data = await api('/api/models');
  state.models = data.models || [];
  const body = $('#models-table tbody');
  body.replaceChildren(...state.models.map((m) => {
    const params = num(m.parameter_count);
    const tr = el('tr', {'data-model': m.name},
      el('td', {text: m.name}), numCell('td', m.version, {'data-field': 'version'}, 0),
      numCell('td', (m.versions || []).length, {'data-field': 'versions'}, 0),
      numCell('td', params, {'data-field': 'parameter_count'}, 0),
      el('td', {'data-field': 'bytes', text: (params * 4 / 1024).toFixed(1) + ' KiB'}),
      numCell('td', (m.history || []).length, {'data-field': 'epochs'}, 0),
      numCell('td', m.steps, {'data-field': 'steps'}, 0),
      el('td', {text: (m.spec && m.spec.task || '').replace('TASK_', '').toLowerCase()}),
      el('td', {'data-field': 'training', text: m.training ? 'training' : ''}));
    tr.addEventListener('click', () => { state.selected = m.name; drawCurves(); });
    if (m.name === state.selected) tr.classList.add('selected');
    return tr;
  }));
  const names = state.models.map((m) => m.name);
  if (!names.includes(state.selected)) state.selected = names[0] || null;
  fillSelect($('#eval-model'), names);
  fillSelect($('#unc-model'), names);
  drawCurves();
}

function drawCurves() {
  for (const tr of document.querySelectorAll('#models-table tbody tr')) {
    tr.classList.toggle('selected', tr.dataset.model === state.selected);
  }
  const m = state.models.find((x) => x.name === state.selected);
  $('#curve-model').textContent = m ? `— ${m.name}${m.training ? ' (training)' : ''}` : '';
  const h = m ? m.history || [] : [];
  const labels = h.map((r) => r.epoch);
  const series = (key) => h.map((r) => (Number.isFinite(num(r[key])) ? num(r[key]) : null));
  const regression = m && m.spec && m.spec.task === 'TASK_REGRESSION';
  const line = (label, data, color) => ({label, data, borderColor: color, backgroundColor: color,
                                         spanGaps: true, tension: 0.1});
  const update = (id, title, datasets) => {
    const c = state.charts[id];
    if (c && c.config.options.plugins.title.text === title) {
      c.data.labels = labels;
      c.data.datasets.forEach((d, i) => { d.data = datasets[i].data; });
      c.update();
      return;
    }
    chart(id, {type: 'line', data: {labels, datasets},
               options: {plugins: {title: {display: true, text: title}},
                         scales: {x: {title: {display: true, text: 'epoch'}}}}});
  };
  update('loss-chart', 'loss', [line('training loss', series('loss'), '#1f77b4'),
                                line('validation loss', series('val_loss'), '#ff7f0e')]);
  update('metric-chart', regression ? 'RMSE' : 'accuracy',
         [line('training', series('metric'), '#2ca02c'),
          line('validation', series('val_metric'), '#d62728')]);
}

// ---- evaluation ----

async function loadDatasets() {
  const data = await api('/api/datasets');
  fillSelect($('#eval-dataset'), (data.datasets || []).map((d) => d.name));
}

async function evaluate(ev) {
  ev.preventDefault();
  const base = {model: $('#eval-model').value, dataset: $('#eval-dataset').value,
                limit: String(num($('#eval-limit').value) || 0)};
  setStatus('evaluating…');
  const mc = {...base, mode: 'EVAL_MODE_MONTE_CARLO', samples: num($('#eval-samples').value),
              seed: String($('#eval-seed').value)};
  const results = await Promise.allSettled([api('/api/evaluate', {...base, mode: 'EVAL_MODE_EVAL'}),
                                            api('/api/evaluate', mc)]);
  const [e, m] = results.map((r) => (r.status === 'fulfilled' ? r.value : {error: r.reason.message}));
  const ok = e.error ? m : e;
  if (ok.error) { setStatus(ok.error, true); return; }
  const regression = ok.task === 'TASK_REGRESSION';
  const metrics = regression ? ['rmse', 'log_likelihood'] : ['accuracy', 'nll', 'brier', 'ece'];
  const cell = (r, key, mode) => (r.error ? el('td', {class: 'error', text: r.error})
                                          : numCell('td', r[key], {'data-metric': key, 'data-mode': mode}));
  $('#eval-table tbody').replaceChildren(
    ...metrics.map((k) => el('tr', {}, el('th', {text: k}), cell(e, k, 'eval'), cell(m, k, 'monte_carlo'))),
    el('tr', {}, el('th', {text: 'rows'}), numCell('td', ok.rows, {}, 0),
       el('td', {text: m.error ? '' : `T = ${m.samples}, seed ${m.seed}`})));
  setStatus(`evaluated ${ok.rows} rows of ${base.dataset} on ${base.model} version ${ok.version}`);
  if (!regression) drawReliability(e, m);
}

function drawReliability(e, m) {
  const bins = (e.reliability || m.reliability || []);
  const labels = bins.map((b) => `${fmt(b.lower, 2)}–${fmt(b.upper, 2)}`);
  const acc = (r) => (r.reliability || []).map((b) => (num(b.count) > 0 ? num(b.accuracy) : null));
  const datasets = [
    {type: 'line', label: 'perfect calibration', borderColor: '#888', pointRadius: 0,
     data: bins.map((b) => (num(b.lower) + num(b.upper)) / 2)}];
  if (!e.error) datasets.push({label: 'eval accuracy', data: acc(e), backgroundColor: '#1f77b4'});
  if (!m.error) datasets.push({label: 'Monte-Carlo accuracy', data: acc(m), backgroundColor: '#ff7f0e'});
  chart('reliability-chart', {type: 'bar', data: {labels, datasets},
        options: {plugins: {title: {display: true, text: 'reliability diagram (accuracy by confidence bin)'}},
                  scales: {y: {min: 0, max: 1, title: {display: true, text: 'accuracy'}},
                           x: {title: {display: true, text: 'confidence'}}}}});
}

// ---- uncertainty explorer ----

// Rows of numbers from CSV text; a first line that is not numbers is a header.
function parseCsv(text, width) {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const rows = [];
  lines.forEach((line, i) => {
    const cells = line.split(',').map((c) => c.trim());
    const values = cells.map(Number);
    if (values.some((v) => !Number.isFinite(v))) {
      if (i === 0) return;  // header
      throw new Error(`line ${i + 1}: '${line.slice(0, 40)}' is not numbers`);
    }
    if (values.length !== width) {
      throw new Error(`line ${i + 1} has ${values.length} values, the model takes ${width}`);
    }
    rows.push(values);
  });
  if (!rows.length) throw new Error('no rows: paste comma-separated features or choose a CSV file');
  return rows;
}

// [height, width] when the model's input is an image, else null.
function imageShape(shape) {
  if (shape.length === 2) return shape;
  if (shape.length === 3 && shape[0] === 1) return shape.slice(1);
  if (shape.length === 1 && shape[0] >= 64 && Number.isInteger(Math.sqrt(shape[0]))) {
    return [Math.sqrt(shape[0]), Math.sqrt(shape[0])];
  }
  return null;
}

function drawImage(values, [h, w]) {
  const canvas = el('canvas', {class: 'row-image', width: w, height: h});
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(w, h);
  const lo = Math.min(...values), hi = Math.max(...values);
  values.forEach((v, i) => {
    const g = hi > lo ? Math.round(255 * (v - lo) / (hi - lo)) : 0;
    img.data.set([g, g, g, 255], i * 4);
  });
  ctx.putImageData(img, 0, 0);
  return canvas;
}

function histogram(values, lo, hi, bins = 20) {
  const counts = new Array(bins).fill(0);
  const width = hi > lo ? (hi - lo) / bins : 1;
  for (const v of values) counts[Math.min(bins - 1, Math.max(0, Math.floor((v - lo) / width)))]++;
  return {counts, labels: counts.map((_, i) => fmt(lo + (i + 0.5) * width, 2))};
}

async function explain(ev) {
  ev.preventDefault();
  const name = $('#unc-model').value;
  const model = state.models.find((m) => m.name === name);
  const out = $('#unc-results');
  out.replaceChildren();
  try {
    if (!model) throw new Error('choose a model');
    const shape = (model.spec.input_shape || []).map(Number);
    const width = shape.reduce((a, b) => a * b, 1);
    const rows = parseCsv($('#unc-rows').value, width);
    setStatus(`sampling ${rows.length} rows…`);
    const r = await api('/api/uncertainty', {
      model: name, inputs: {shape: [String(rows.length), ...shape.map(String)], values: rows.flat()},
      samples: num($('#unc-samples').value), seed: String($('#unc-seed').value), return_samples: true});
    rows.forEach((row, i) => out.append(rowCard(r, i, row, shape)));
    setStatus(`T = ${r.num_samples} samples, seed ${r.seed}, version ${r.version}`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

function rowCard(r, i, row, shape) {
  const outputs = num(r.mean.shape[1]);
  const mean = r.mean.values.slice(i * outputs, (i + 1) * outputs).map(num);
  const std = r.stddev.values.slice(i * outputs, (i + 1) * outputs).map(num);
  const [t, rows] = r.samples.shape.map(num);
  const sampled = (j) => Array.from({length: t}, (_, s) => num(r.samples.values[(s * rows + i) * outputs + j]));
  const card = el('div', {class: 'row-card', 'data-row': String(i)});
  const head = el('div', {class: 'row-head'}, el('h3', {text: `row ${i + 1}`}));
  const img = imageShape(shape);
  if (img) head.append(drawImage(row, img));
  card.append(head);
  const facts = el('table', {class: 'facts'});
  const fact = (label, field, value, extra) => facts.append(
    el('tr', {}, el('th', {text: label}), numCell('td', value, {'data-field': field}), el('td', {text: extra || ''})));
  let hist;
  if (r.task === 'TASK_CLASSIFICATION') {
    const k = num(r.predicted_class[i]);
    const names = r.class_names || [];
    const top = mean.map((p, c) => [p, c]).sort((a, b) => b[0] - a[0]).slice(0, 3);
    facts.append(el('tr', {}, el('th', {text: 'predicted class'}),
                    el('td', {'data-field': 'predicted_class', 'data-value': String(k), text: names[k] || String(k)})));
    for (const [p, c] of top) fact(`p(${names[c] || c})`, `mean_${c}`, p, `± ${fmt(std[c])}`);
    const total = num(r.predictive_entropy[i]), alea = num(r.expected_entropy[i]);
    const epi = num(r.mutual_information[i]);
    fact('predictive entropy', 'predictive_entropy', total, 'nats');
    fact('aleatoric (expected entropy)', 'expected_entropy', alea);
    fact('epistemic (mutual information)', 'mutual_information', epi);
    fact('variation ratio', 'variation_ratio', r.variation_ratio[i]);
    // Styles are set through the DOM: the page's Content-Security-Policy refuses style attributes.
    const part = (cls, share) => {
      const s = el('span', {class: cls});
      s.style.width = `${total > 0 ? 100 * share / total : 0}%`;
      return s;
    };
    const bar = el('div', {class: 'split-box'},
                   el('div', {class: 'split', title: 'aleatoric | epistemic'},
                      part('aleatoric', alea), part('epistemic', epi)),
                   el('div', {class: 'split-legend', text: 'aleatoric | epistemic share of the entropy'}));
    card.append(facts, bar);
    hist = {title: `p(${names[k] || k}) over the ${t} samples`, ...histogram(sampled(k), 0, 1)};
  } else {
    const lower = r.lower.values.slice(i * outputs, (i + 1) * outputs).map(num);
    const upper = r.upper.values.slice(i * outputs, (i + 1) * outputs).map(num);
    mean.forEach((m, j) => {
      fact(`mean ${j}`, `mean_${j}`, m, `± ${fmt(std[j])}  [${fmt(lower[j])}, ${fmt(upper[j])}]`);
    });
    card.append(facts);
    const s = sampled(0);
    hist = {title: `output 0 over the ${t} samples`, ...histogram(s, Math.min(...s), Math.max(...s))};
  }
  const box = el('div', {class: 'chart small'});
  const canvas = el('canvas', {class: 'sample-hist'});
  box.append(canvas);
  card.append(box);
  requestAnimationFrame(() => {
    const c = new Chart(canvas, {type: 'bar',
      data: {labels: hist.labels, datasets: [{label: 'samples', data: hist.counts, backgroundColor: '#9467bd'}]},
      options: {animation: false, responsive: true, maintainAspectRatio: false,
                plugins: {legend: {display: false}, title: {display: true, text: hist.title}}}});
    canvas.dataset.samples = String(hist.counts.reduce((a, b) => a + b, 0));
    state.charts['hist-' + i] = c;
  });
  return card;
}

// ---- views ----

function show(view) {
  state.view = view;
  for (const s of document.querySelectorAll('.view')) s.hidden = s.id !== 'view-' + view;
  for (const b of document.querySelectorAll('.tab')) b.classList.toggle('active', b.dataset.view === view);
  if (view === 'evaluate') loadDatasets().catch((e) => setStatus(e.message, true));
}

async function refresh() {
  try {
    await loadModels();
    const s = $('#status');
    if (!s.textContent || /models?$/.test(s.textContent) || s.dataset.fromRefresh) {
      setStatus(`${state.models.length} model${state.models.length === 1 ? '' : 's'}`);
      s.dataset.fromRefresh = '1';
    }
  } catch (e) {
    setStatus(e.message, true);
    $('#status').dataset.fromRefresh = '1';
  }
}

function start() {
  $('#token').value = sessionStorage.getItem(TOKEN_KEY) || '';
  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token').value);
    setStatus('');
    refresh();
  });
  for (const b of document.querySelectorAll('.tab')) b.addEventListener('click', () => show(b.dataset.view));
  $('#eval-form').addEventListener('submit', (ev) => evaluate(ev).catch((e) => setStatus(e.message, true)));
  $('#unc-form').addEventListener('submit', explain);
  $('#unc-file').addEventListener('change', async (ev) => {
    const f = ev.target.files[0];
    if (f) $('#unc-rows').value = await f.text();
  });
  show('models');
  refresh();
  // Training curves grow while a training runs: poll while the models view is shown.
  state.poll = setInterval(() => { if (state.view === 'models') refresh(); }, 2000);
}

start();
