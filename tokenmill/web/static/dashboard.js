// The live dashboard: one SSE stream (/tokenmill/dashboard/stream, read through fetch so the
// API key travels in a header) gives the facts and the last hour, then a snapshot a second.
// The page never parses Prometheus text: the server sends numbers.
"use strict";

const $ = (id) => document.getElementById(id);
const pct = (v) => v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %";
const ms = (v) => v === null || v === undefined ? "–" : (1000 * v).toFixed(v < 0.1 ? 1 : 0) + " ms";
const num = (d) => (v) => TM.fmt(v, d);
const money = (v) => v === null || v === undefined ? "–" : "$" + (v < 0.01 && v > 0 ? v.toExponential(2) : v.toFixed(4));

const VIEWS = {
  server: {
    tiles: [
      ["requests_per_s", "requests / s", num(2)], ["requests_total", "requests finished", num(0)],
      ["error_rate_4xx", "4xx share of responses", pct], ["error_rate_5xx", "5xx share of responses", pct],
      ["running", "running", num(0)], ["waiting", "waiting", num(0)],
      ["ttft_p50", "TTFT p50", ms], ["ttft_p95", "TTFT p95", ms],
      ["tpot_p50", "time / output token p50", ms], ["tpot_p95", "time / output token p95", ms],
      ["e2e_p50", "end-to-end p50", ms], ["e2e_p95", "end-to-end p95", ms],
      ["prompt_tokens_per_s", "prompt tok/s", num(1)], ["generation_tokens_per_s", "generated tok/s", num(1)],
      ["kv_usage", "KV cache in use", pct], ["prefix_hit_rate", "prefix cache hit rate", pct],
      ["cpu_percent", "CPU (process)", (v) => TM.fmt(v, 0) + " %"], ["rss_mb", "RSS", (v) => TM.fmt(v, 0) + " MB"],
      ["gpu_util", "GPU utilisation", (v) => TM.fmt(v, 0) + " %"], ["gpu_mem_mb", "GPU memory", (v) => TM.fmt(v, 0) + " MB"],
      ["cost_per_request", "cost / request", money], ["cost_per_hour", "cost / hour", money],
    ],
    charts: [
      ["Throughput", [["requests_per_s", "requests/s"], ["prompt_tokens_per_s", "prompt tok/s"], ["generation_tokens_per_s", "generated tok/s"]]],
      ["Latency (s)", [["ttft_p50", "TTFT p50"], ["ttft_p95", "TTFT p95"], ["tpot_p95", "TPOT p95"], ["e2e_p50", "e2e p50"], ["e2e_p95", "e2e p95"]]],
      ["Queue", [["running", "running"], ["waiting", "waiting"]]],
      ["Errors (share of responses)", [["error_rate_4xx", "4xx"], ["error_rate_5xx", "5xx"]]],
      ["Memory and CPU", [["kv_usage", "KV in use (0-1)"], ["prefix_hit_rate", "prefix hit rate"], ["cpu_percent", "CPU %"], ["rss_mb", "RSS MB"]]],
    ],
  },
  router: {
    tiles: [
      ["requests_per_s", "requests / s", num(2)], ["requests_total", "requests", num(0)],
      ["error_rate_4xx", "4xx share", pct], ["error_rate_5xx", "5xx share", pct],
      ["latency_p50", "latency p50", ms], ["latency_p95", "latency p95", ms],
      ["outstanding", "outstanding", num(0)], ["queue", "waiting for a slot", num(0)],
      ["cache_hit_rate", "response-cache hit rate", pct], ["large_share", "routed large", pct],
      ["cost_per_request", "cost / request", money], ["cost_per_hour", "cost / hour", money],
    ],
    charts: [
      ["Requests", [["requests_per_s", "requests/s"], ["outstanding", "outstanding"]]],
      ["Latency (s)", [["latency_p50", "p50"], ["latency_p95", "p95"]]],
      ["Cache and routing", [["cache_hit_rate", "cache hit rate"], ["large_share", "large share"]]],
      ["Cost per hour ($)", [["cost_per_hour", "cost/hour"]]],
    ],
  },
};

const dash = {hello: null, latest: null, pushes: 0, history: [], plots: []};
window.tmDashboard = dash;  // for people poking around in the console, and for the browser tests

function tiles(view, series) {
  const box = $("tiles");
  if (!box.childElementCount) {
    for (const [key, label] of view.tiles)
      box.append(TM.el("div", {class: "tile", id: "tile-" + key},
                       TM.el("div", {class: "label", text: label}), TM.el("div", {class: "value", text: "–"})));
  }
  for (const [key, , format] of view.tiles) {
    const tile = $("tile-" + key);
    const v = series[key];
    tile.classList.toggle("hidden", v === undefined && (key.startsWith("gpu") || key.startsWith("cost")));
    tile.lastElementChild.textContent = v === undefined || v === null ? "–" : format(v);
    tile.dataset.value = v === undefined || v === null ? "" : String(v);
  }
}

function makeCharts(view) {
  const box = $("charts");
  box.textContent = "";
  dash.plots = [];
  for (const [title, lines] of view.charts) {
    const holder = TM.el("div", {class: "chart"}, TM.el("h3", {text: title}));
    box.append(holder);
    const colors = ["#2f6fde", "#d9480f", "#2b8a3e", "#9c36b5", "#868e96"];
    const opts = {
      width: Math.max(300, holder.clientWidth - 16), height: 200,
      scales: {x: {time: true}},
      series: [{}].concat(lines.map(([, label], i) => ({label, stroke: colors[i % colors.length], width: 1.5,
                                                         spanGaps: true}))),
      axes: [{}, {size: 60}],
      legend: {live: false},
    };
    const plot = new uPlot(opts, chartData(lines), holder);
    dash.plots.push({plot, lines});
  }
}

function chartData(lines) {
  const xs = dash.history.map((h) => h.t);
  return [xs].concat(lines.map(([key]) => dash.history.map((h) => {
    const v = h.series[key];
    return v === undefined ? null : v;
  })));
}

function redraw() {
  for (const {plot, lines} of dash.plots) plot.setData(chartData(lines));
}

function table(title, head, rows, id) {
  return TM.el("div", {class: "table", id},
    TM.el("h3", {text: title}),
    TM.el("table", {},
      TM.el("thead", {}, TM.el("tr", {}, ...head.map((h) => TM.el("th", {text: h})))),
      TM.el("tbody", {}, ...rows.map((r) => TM.el("tr", {}, ...r.map((c) =>
        c instanceof Node ? TM.el("td", {}, c) : TM.el("td", {class: typeof c === "number" ? "num" : "", text: String(c)})))))));
}

function gib(n) { return n >= 2 ** 30 ? (n / 2 ** 30).toFixed(2) + " GiB" : (n / 2 ** 20).toFixed(1) + " MiB"; }

function tables() {
  const box = $("tables");
  box.textContent = "";
  const d = dash.latest ? dash.latest.detail : {};
  const h = dash.hello;
  if (h.kind === "router") {
    box.append(table("Backends", ["route", "backend", "health", "outstanding", "p50", "p95", "requests"],
      (d.backends || []).map((b) => [b.route, b.url, TM.el("span", {class: b.healthy ? "ok" : "down",
        text: b.healthy ? "healthy" : "down" + (b.error ? ": " + b.error : "")}), b.outstanding,
        ms(b.latency_p50), ms(b.latency_p95), b.requests]), "backends"));
    box.append(table("Routing split", ["route", "forced", "classifier", "single", "share"],
      (d.routes || []).map((r) => [r.route, r.forced, r.classifier, r.single, pct(r.share)]), "routing"));
    box.append(table("Cost by route (ledger)", ["route", "requests", "cache hits", "prompt tok", "completion tok", "cost"],
      (d.cost_by_route || []).map((r) => [r.group, r.requests, r.cache_hits, r.prompt_tokens, r.completion_tokens, money(r.cost)]), "cost-route"));
    if (d.cost_by_key)
      box.append(table("Cost by API key (admin)", ["key", "requests", "cache hits", "prompt tok", "completion tok", "cost"],
        d.cost_by_key.map((r) => [r.group, r.requests, r.cache_hits, r.prompt_tokens, r.completion_tokens, money(r.cost)]), "cost-key"));
    else
      box.append(TM.el("div", {class: "table muted", id: "cost-key", text: "Cost by API key: shown to an admin key only."}));
  }
  if (d.models) {
    const until = (m) => m.busy ? "in use" : m.expires_in_s === null ? "kept" : TM.fmt(m.expires_in_s, 0) + " s";
    box.append(table("Loaded models", ["model", "memory", "requests", "running", "waiting", "KV in use", "unloads in"],
      d.models.map((m) => [m.name, gib(m.size_bytes), m.requests, m.running, m.waiting, pct(m.kv_usage), until(m)]),
      "models"));
  }
  const e = h.estimate;
  if (e && e.formats) {
    box.append(table(`Memory and speed estimate for ${e.model.name} (${(e.model.params / 1e6).toFixed(0)}M parameters, context ${e.context})`,
      ["format", "weights", "+ KV cache", "decode tok/s bound"],
      e.formats.map((f) => [f.format, gib(f.weights_bytes), gib(f.total_bytes), TM.fmt(f.decode_tok_s_one_stream, 1)]), "estimate"));
  }
  if (d.totals) {
    box.append(table("Counters (as /metrics)", ["metric", "value"],
      Object.entries(d.totals).filter(([k]) => !k.endsWith("_sum")).map(([k, v]) => [k, v]), "totals"));
  }
}

function onHello(h) {
  dash.hello = h;
  // the C++ kernels missing: everything runs on the slower PyTorch paths, and the page says so
  if (h.kernels && !h.kernels.loaded && h.kernels.error)
    $("error").textContent = "The C++ kernels are not loaded (" + h.kernels.error + "): the model runs on slower PyTorch paths.";
  dash.history = h.history || [];
  const view = VIEWS[h.kind] || VIEWS.server;
  $("title").textContent = h.kind === "router" ? "tokenmill router" : h.model;
  const facts = [];
  if (h.device) facts.push(h.device);
  if (h.max_model_len) facts.push(`context ${h.max_model_len}`);
  if (h.window_s) facts.push(`percentiles over ${h.window_s} s`);
  if (h.price && (h.price.in || h.price.out)) facts.push(`$${h.price.in} / $${h.price.out} per M tokens in / out`);
  $("facts").textContent = facts.join(" · ");
  const last = dash.history[dash.history.length - 1];
  tiles(view, last ? last.series : {});
  makeCharts(view);
  tables();
}

function onSnapshot(s) {
  dash.latest = s;
  dash.pushes += 1;
  dash.history.push({t: s.t, series: s.series});
  const cutoff = s.t - 3600;
  while (dash.history.length && dash.history[0].t < cutoff) dash.history.shift();
  tiles(VIEWS[dash.hello.kind] || VIEWS.server, s.series);
  redraw();
  tables();
  $("live").textContent = "live · " + new Date(s.t * 1000).toLocaleTimeString();
  $("live").className = "on";
}

async function connect() {
  for (;;) {
    try {
      const r = await fetch("/tokenmill/dashboard/stream", {headers: TM.headers()});
      if (!r.ok) {
        let data = null;
        try { data = await r.json(); } catch (e) { /* not JSON */ }
        throw Object.assign(new Error(TM.errorMessage(data, r.status)), {status: r.status});
      }
      $("error").textContent = "";
      await TM.readSSE(r, (event, data) => {
        const obj = JSON.parse(data);
        if (event === "hello") onHello(obj);
        else if (event === "snapshot") onSnapshot(obj);
      });
    } catch (e) {
      $("error").textContent = e.message + (e.status === 401 ? " (set the API key: top right)" : "");
      if (e.status === 401) return;
    }
    $("live").textContent = "reconnecting…";
    $("live").className = "off";
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

document.addEventListener("DOMContentLoaded", () => { TM.nav("/dashboard"); connect(); });
window.addEventListener("resize", () => {
  for (const {plot} of dash.plots) plot.setSize({width: Math.max(300, plot.root.parentElement.clientWidth - 16), height: 200});
});
