// Evaluation and comparison views as HTML strings: the per-label metrics table, the Dice/NSD
// bar chart (inline SVG), the comparison of runs, and the exports (CSV, JSON, a self-contained
// HTML report). Pure functions of the runs; the page (main.js) and the HTML report share them.
//
// A run: {id, modelId, modelName, kind ('task-specific' | 'generalist'), prompts (how a
//         generalist was prompted, or null), backend, adapter, timings_ms, parameters, gflops,
//         peak_tensor_mb, wasm_heap_mb, labelInfo: [{value, name, rgb}],
//         evaluation: null | {report (metrics::Report JSON), referenceName, mapping, toleranceMm}}

export const CSV_COLUMNS = [
  'run',
  'model',
  'kind',
  'prompts',
  'label',
  'name',
  'dice',
  'iou',
  'hd95',
  'assd',
  'nsd',
  'vol_pred_ml',
  'vol_ref_ml',
  'runtime_ms',
  'parameters',
  'gflops',
  'peak_tensor_mb',
  'backend',
];

const DICE_COLOUR = '#2b6cb0';
const NSD_COLOUR = '#dd8a1e';

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

/** The display name of a label: the mapping's (in the report), else the model's registry name. */
export function labelName(run, label, metrics) {
  if (metrics?.name) return metrics.name;
  return run.labelInfo?.find((l) => String(l.value) === String(label))?.name ?? `label ${label}`;
}

/** [{label, name, metrics}] of a run's evaluation, in label order. */
export function labelRows(run) {
  const labels = run.evaluation?.report?.labels ?? {};
  return Object.keys(labels)
    .sort((a, b) => Number(a) - Number(b))
    .map((label) => ({ label: Number(label), name: labelName(run, label, labels[label]), metrics: labels[label] }));
}

function emptyTooltip(metrics) {
  const which = metrics.empty === 'reference' ? 'the reference' : metrics.empty === 'prediction' ? 'the prediction' : 'one mask';
  return `Infinite: ${which} has no voxels of this label (one mask is empty), so there is no surface to measure a distance to.`;
}

function fixed(value, digits) {
  return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : '';
}

/** A table cell holding a number: shown rounded, the exact value in data-value. */
function numberCell(value, digits, metrics) {
  if (value === null || value === undefined) {
    if (metrics?.infinite_distance) {
      return `<td class="num inf" data-value="inf" title="${escapeHtml(emptyTooltip(metrics))}">∞</td>`;
    }
    return '<td class="num" data-value="">–</td>';
  }
  return `<td class="num" data-value="${value}">${fixed(value, digits)}</td>`;
}

/** The per-label metrics table of one run (inner HTML of a <table>). */
export function evaluationTable(run) {
  const rows = labelRows(run);
  const head =
    '<thead><tr><th>Label</th><th>Name</th><th>Dice</th><th>IoU</th><th>HD95 (mm)</th><th>ASSD (mm)</th>' +
    `<th>NSD @ ${escapeHtml(run.evaluation?.toleranceMm ?? '')} mm</th><th>Volume model (mL)</th><th>Volume reference (mL)</th></tr></thead>`;
  const body = rows
    .map(
      ({ label, name, metrics: m }) =>
        `<tr data-label="${label}"><td class="num">${label}</td><td>${escapeHtml(name)}</td>` +
        numberCell(m.dice, 4, m).replace('<td', '<td data-metric="dice"') +
        numberCell(m.iou, 4, m).replace('<td', '<td data-metric="iou"') +
        numberCell(m.hd95, 2, m).replace('<td', '<td data-metric="hd95"') +
        numberCell(m.assd, 2, m).replace('<td', '<td data-metric="assd"') +
        numberCell(m.nsd, 4, m).replace('<td', '<td data-metric="nsd"') +
        numberCell(m.vol_pred_ml, 2, m).replace('<td', '<td data-metric="vol_pred_ml"') +
        numberCell(m.vol_ref_ml, 2, m).replace('<td', '<td data-metric="vol_ref_ml"') +
        '</tr>',
    )
    .join('');
  return `${head}<tbody>${body}</tbody>`;
}

/** An SVG bar chart of Dice and NSD per label of one run (a complete <svg> element). */
export function evaluationChart(run) {
  const rows = labelRows(run);
  const group = 96;
  const bar = 28;
  const left = 40;
  const top = 28;
  const height = 160;
  const width = left + Math.max(rows.length, 1) * group + 16;
  const y = (v) => top + height * (1 - Math.max(0, Math.min(1, v)));
  const grid = [0, 0.25, 0.5, 0.75, 1]
    .map(
      (v) =>
        `<line x1="${left}" x2="${width - 8}" y1="${y(v)}" y2="${y(v)}" stroke="#d8dce3"/>` +
        `<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end" font-size="11" fill="#5b6475">${v}</text>`,
    )
    .join('');
  const bars = rows
    .map(({ label, name, metrics: m }, i) => {
      const x = left + i * group + (group - 2 * bar - 2) / 2;
      const rect = (value, dx, colour, what) =>
        `<rect x="${x + dx}" y="${y(value)}" width="${bar}" height="${y(0) - y(value)}" fill="${colour}">` +
        `<title>${escapeHtml(`${name}: ${what} ${fixed(value, 4)}`)}</title></rect>`;
      const short = name.length > 15 ? `${name.slice(0, 14)}…` : name;
      return (
        rect(m.dice, 0, DICE_COLOUR, 'Dice') +
        rect(m.nsd, bar + 2, NSD_COLOUR, 'NSD') +
        `<text x="${x + bar}" y="${y(0) + 14}" text-anchor="middle" font-size="11" fill="#1d2330">${escapeHtml(short)}</text>` +
        `<text x="${x + bar}" y="${y(0) + 27}" text-anchor="middle" font-size="10" fill="#5b6475">${label}</text>`
      );
    })
    .join('');
  const legend =
    `<rect x="${left}" y="6" width="12" height="12" fill="${DICE_COLOUR}"/><text x="${left + 16}" y="16" font-size="12">Dice</text>` +
    `<rect x="${left + 60}" y="6" width="12" height="12" fill="${NSD_COLOUR}"/><text x="${left + 76}" y="16" font-size="12">NSD</text>`;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${top + height + 34}" ` +
    `viewBox="0 0 ${width} ${top + height + 34}" role="img" aria-label="Dice and NSD per label for ${escapeHtml(run.modelName)}" ` +
    `font-family="system-ui, sans-serif">${grid}${legend}${bars}</svg>`
  );
}

/** The labels of all evaluated runs: [{label, name}] (the first run's name wins). */
function allLabels(runs) {
  const seen = new Map();
  for (const run of runs) {
    for (const { label, name } of labelRows(run)) if (!seen.has(label)) seen.set(label, name);
  }
  return [...seen].sort((a, b) => a[0] - b[0]).map(([label, name]) => ({ label, name }));
}

function runtime(run) {
  return run.timings_ms?.total ?? null;
}

/** The comparison table (inner HTML of a <table>): one column per run. */
export function comparisonTable(runs, selectedId = null) {
  const head =
    '<thead><tr><th></th>' +
    runs
      .map(
        (r) =>
          `<th data-run="${escapeHtml(r.id)}"${r.id === selectedId ? ' class="selected"' : ''}>${escapeHtml(r.modelName)}` +
          `<br><small>${escapeHtml(r.id)}</small></th>`,
      )
      .join('') +
    '</tr></thead>';
  const row = (title, key, cell) =>
    `<tr data-row="${escapeHtml(key)}"><th scope="row">${escapeHtml(title)}</th>${runs.map(cell).join('')}</tr>`;
  const plainCell = (value, digits) =>
    value === null || value === undefined ? '<td class="num" data-value="">–</td>' : numberCell(value, digits);
  const text = (value) => `<td data-value="${escapeHtml(value ?? '')}">${escapeHtml(value ?? '–')}</td>`;
  const rows = [
    row('Kind', 'kind', (r) => text(r.kind)),
    row('Prompts', 'prompts', (r) => text(r.prompts)),
    row('Backend', 'backend', (r) => `<td data-value="${escapeHtml(r.backend)}">${escapeHtml(r.backend)}</td>`),
    row('Runtime (ms)', 'runtime_ms', (r) => plainCell(runtime(r), 0)),
    row('Peak tensor memory (MB)', 'peak_tensor_mb', (r) => plainCell(r.peak_tensor_mb, 1)),
    row('wasm heap (MB)', 'wasm_heap_mb', (r) => plainCell(r.wasm_heap_mb, 1)),
    row('Parameters', 'parameters', (r) => plainCell(r.parameters, 0)),
    row('GFLOPs', 'gflops', (r) => plainCell(r.gflops, 2)),
  ];
  for (const { label, name } of allLabels(runs)) {
    for (const [metric, title, digits] of [
      ['dice', 'Dice', 4],
      ['nsd', 'NSD', 4],
      ['hd95', 'HD95 (mm)', 2],
    ]) {
      rows.push(
        row(`${title} · ${label} ${name}`, `${metric}:${label}`, (r) => {
          const m = r.evaluation?.report?.labels?.[label];
          return m ? numberCell(m[metric], digits, m) : '<td class="num" data-value="">–</td>';
        }),
      );
    }
  }
  return `${head}<tbody>${rows.join('')}</tbody>`;
}

/** One record per run × label (one per run without labels when it has no evaluation). */
export function comparisonRecords(runs) {
  const records = [];
  for (const run of runs) {
    const common = {
      run: run.id,
      model: run.modelName,
      kind: run.kind ?? null,
      prompts: run.prompts ?? null,
      runtime_ms: runtime(run),
      parameters: run.parameters ?? null,
      gflops: run.gflops ?? null,
      peak_tensor_mb: run.peak_tensor_mb ?? null,
      backend: run.backend,
    };
    const rows = labelRows(run);
    if (!rows.length) {
      records.push({ ...common, label: null, name: null, dice: null, iou: null, hd95: null, assd: null, nsd: null, vol_pred_ml: null, vol_ref_ml: null });
    }
    for (const { label, name, metrics: m } of rows) {
      records.push({
        ...common,
        label,
        name,
        dice: m.dice,
        iou: m.iou,
        hd95: m.hd95,
        assd: m.assd,
        nsd: m.nsd,
        vol_pred_ml: m.vol_pred_ml,
        vol_ref_ml: m.vol_ref_ml,
        infinite_distance: m.infinite_distance,
      });
    }
  }
  return records;
}

function csvField(value) {
  const text = String(value);
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** CSV, one row per run × label; infinite distances are `inf` (as the CLI writes them). */
export function comparisonCsv(runs) {
  const lines = [CSV_COLUMNS.join(',')];
  for (const record of comparisonRecords(runs)) {
    lines.push(
      CSV_COLUMNS.map((column) => {
        const value = record[column];
        if (value === null || value === undefined) {
          return (column === 'hd95' || column === 'assd') && record.infinite_distance ? 'inf' : '';
        }
        return csvField(value);
      }).join(','),
    );
  }
  return `${lines.join('\n')}\n`;
}

/** The comparison as structured JSON: the case, then each run with its settings and report. */
export function comparisonJson(runs, { caseName, referenceName }) {
  const data = {
    generator: 'insitu',
    case: caseName ?? null,
    reference: referenceName ?? null,
    columns: CSV_COLUMNS,
    runs: runs.map((r) => ({
      run: r.id,
      model: r.modelName,
      model_id: r.modelId,
      kind: r.kind ?? null,
      prompts: r.prompts ?? null,
      backend: r.backend,
      adapter: r.adapter ?? null,
      runtime_ms: runtime(r),
      timings_ms: r.timings_ms ?? null,
      parameters: r.parameters ?? null,
      gflops: r.gflops ?? null,
      peak_tensor_mb: r.peak_tensor_mb ?? null,
      wasm_heap_mb: r.wasm_heap_mb ?? null,
      evaluation: r.evaluation
        ? {
            reference: r.evaluation.referenceName,
            mapping: r.evaluation.mapping || null,
            tolerance_mm: r.evaluation.toleranceMm,
            labels: labelRows(r).map(({ label, name, metrics }) => ({ label, ...metrics, name })),
            mean: r.evaluation.report.mean ?? null,
          }
        : null,
    })),
    rows: comparisonRecords(runs),
  };
  return `${JSON.stringify(data, null, 2)}\n`;
}

const REPORT_CSS = `
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1d2330; margin: 2rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d8dce3; padding: 0.25rem 0.5rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #f0f2f5; }
.meta { color: #5b6475; }
`;

/** A self-contained HTML report: inline CSS and SVG, no scripts, no external requests. */
export function comparisonHtml(runs, { caseName, referenceName }) {
  const sections = runs
    .filter((r) => r.evaluation)
    .map(
      (r) =>
        `<h2>${escapeHtml(r.modelName)} <small>(${escapeHtml(r.id)})</small></h2>` +
        `<p class="meta">Reference ${escapeHtml(r.evaluation.referenceName)} · mapping ${escapeHtml(r.evaluation.mapping || 'none')} · ` +
        `NSD tolerance ${escapeHtml(r.evaluation.toleranceMm)} mm</p>` +
        `<table>${evaluationTable(r)}</table>${evaluationChart(r)}`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<!-- No network at all: nothing may load, connect, submit a form or change the base URL; only the inline style applies. -->
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'">
<meta name="referrer" content="no-referrer">
<title>insitu report — ${escapeHtml(caseName ?? '')}</title>
<style>${REPORT_CSS}</style>
</head>
<body>
<h1>insitu segmentation report</h1>
<p class="meta">Case ${escapeHtml(caseName ?? '–')} · reference ${escapeHtml(referenceName ?? 'none')} · ${runs.length} run(s) · written ${escapeHtml(new Date().toISOString())}</p>
<h2>Comparison</h2>
<table>${comparisonTable(runs)}</table>
${sections}
</body>
</html>
`;
}
