/**
 * report.ts — the end-of-training HTML report: loss, learning-rate and eval curves as inline SVG
 * (no scripts, no external resources), a summary table, and sample generations.
 */
import * as fs from 'fs';

export interface ReportData {
  title: string;
  /** [step, loss, lr] for every optimizer step (skipped steps have a non-finite loss). */
  steps: [number, number, number][];
  /** [step, evalLoss, evalAccuracy]. */
  evals: [number, number, number][];
  summary: Record<string, string | number | boolean | null>;
  samples: { prompt: string; completion: string }[];
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]!));
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

/** A line chart of one or more series as an SVG string. */
export function svgChart(title: string, series: { name: string; points: [number, number][]; color: string }[],
                         opts: { width?: number; height?: number } = {}): string {
  const W = opts.width ?? 560, H = opts.height ?? 260;
  const L = 60, R = 16, T = 28, B = 36;
  const pts = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const parts: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="14" font-family="sans-serif">${esc(title)}</text>`];
  if (pts.length === 0) {
    parts.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle" font-size="12" fill="#888" font-family="sans-serif">no data</text></svg>`);
    return parts.join('');
  }
  let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
  let y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = (x: number) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y: number) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  parts.push(`<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#ccc"/>`);
  for (let i = 0; i <= 4; i++) {
    const yv = y0 + ((y1 - y0) * i) / 4, xv = x0 + ((x1 - x0) * i) / 4;
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${sy(yv).toFixed(1)}" y2="${sy(yv).toFixed(1)}" stroke="#eee"/>`);
    parts.push(`<text x="${L - 4}" y="${(sy(yv) + 4).toFixed(1)}" text-anchor="end" font-size="10" font-family="sans-serif">${fmt(yv)}</text>`);
    parts.push(`<text x="${sx(xv).toFixed(1)}" y="${H - B + 14}" text-anchor="middle" font-size="10" font-family="sans-serif">${fmt(Math.round(xv * 100) / 100)}</text>`);
  }
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle" font-size="11" font-family="sans-serif">step</text>`);
  series.forEach((s, k) => {
    const good = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (good.length === 1) {
      parts.push(`<circle cx="${sx(good[0][0]).toFixed(1)}" cy="${sy(good[0][1]).toFixed(1)}" r="3" fill="${s.color}"/>`);
    } else if (good.length > 1) {
      const d = good.map(([x, y], i) => `${i ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join('');
      parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.5"/>`);
    }
    parts.push(`<text x="${W - R - 4}" y="${T + 14 + 14 * k}" text-anchor="end" font-size="11" fill="${s.color}" font-family="sans-serif">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('');
}

/** Exponential moving average (for a readable loss curve next to the raw one). */
function smooth(points: [number, number][], alpha = 0.1): [number, number][] {
  let m = NaN;
  return points.map(([x, y]) => { if (Number.isFinite(y)) m = Number.isFinite(m) ? (1 - alpha) * m + alpha * y : y; return [x, m]; });
}

export function renderReport(d: ReportData): string {
  const loss = d.steps.map(([s, l]) => [s, l] as [number, number]);
  const lr = d.steps.map(([s, , r]) => [s, r] as [number, number]);
  const charts = [
    svgChart('training loss', [{ name: 'loss', points: loss, color: '#9ab' }, { name: 'smoothed', points: smooth(loss), color: '#1565c0' }]),
    svgChart('learning rate', [{ name: 'lr', points: lr, color: '#2e7d32' }]),
  ];
  if (d.evals.length) {
    charts.push(svgChart('evaluation', [{ name: 'eval loss', points: d.evals.map(([s, l]) => [s, l]), color: '#c62828' }]));
    charts.push(svgChart('eval accuracy', [{ name: 'accuracy', points: d.evals.map(([s, , a]) => [s, a]), color: '#6a1b9a' }]));
  }
  const rows = Object.entries(d.summary).map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(typeof v === 'number' ? fmt(v) : String(v))}</td></tr>`).join('\n');
  const samples = d.samples.length
    ? d.samples.map((s) => `<div class="sample"><pre class="prompt">${esc(s.prompt)}</pre><pre class="completion">${esc(s.completion)}</pre></div>`).join('\n')
    : '<p class="none">no sample prompts (set args.samplePrompts)</p>';
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(d.title)}</title>
<style>
body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
.charts{display:flex;flex-wrap:wrap;gap:12px}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}
pre{white-space:pre-wrap;margin:0;padding:6px;font-size:13px}.sample{border:1px solid #ddd;margin:8px 0}
.prompt{background:#f4f4f4}.completion{background:#eef6ee}
</style></head><body>
<h1>${esc(d.title)}</h1>
<table>${rows}</table>
<div class="charts">${charts.join('\n')}</div>
<h2>Sample generations</h2>
${samples}
</body></html>
`;
}

/** Write the report (temp file + rename). */
export function writeReport(file: string, d: ReportData): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, renderReport(d));
  fs.renameSync(tmp, file);
}
