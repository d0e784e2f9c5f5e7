// A tenant's live dashboard: history from the series API, then points from the WebSocket.
(function () {
  "use strict";
  const root = document.getElementById("dashboard");
  const tenant = root.dataset.tenant;
  const model = root.dataset.model;
  const status = document.getElementById("live-status");
  const points = new Map(); // "t|model|version" -> point (points of one key from several gateways add up)
  let range = "15m";
  let loading = 0; // sequence of range loads: only the latest one's answer is drawn
  let retry = 1000;
  const spans = { "15m": 15 * 60e3, "1h": 3600e3, "24h": 86400e3, "30d": 30 * 86400e3 };
  const steps = { "15m": 1, "1h": 5, "24h": 120, "30d": 3600 };
  const live = (window.berthDashboard = { ready: false, updates: 0, lastPointTime: null, lastRequests: 0 });

  function key(p) { return Date.parse(p.t) + "|" + p.model + "|" + p.version; }
  // The log-bucket histogram of inference_workers/histogram.py: 96 buckets, upper edges
  // 50 µs × 2^(i/4). Live points carry their counts, so several gateways' points of one
  // second merge exactly and their percentiles are read from the merged counts.
  const EDGES = Array.from({ length: 95 }, (_, i) => 50e-6 * Math.pow(2, i / 4));
  function percentileMs(counts, q) {
    const indexes = Object.keys(counts).map(Number).sort((a, b) => a - b);
    const total = indexes.reduce((n, i) => n + counts[i], 0);
    if (!total) return null;
    const rank = Math.max((q / 100) * total, 1e-12);
    let seen = 0;
    for (const i of indexes) {
      const count = counts[i];
      if (seen + count >= rank) {
        const lower = i === 0 ? 0 : EDGES[i - 1];
        const upper = i < EDGES.length ? EDGES[i] : EDGES[EDGES.length - 1] * Math.pow(2, 0.25);
        const seconds = i === 0 ? upper * (rank - seen) / count : lower * Math.exp(Math.log(upper / lower) * (rank - seen) / count);
        return Math.round(seconds * 1e6) / 1e3;
      }
      seen += count;
    }
    return null;
  }
  function mergeCounts(into, from) {
    Object.entries(from || {}).forEach(([i, n]) => { into[i] = (into[i] || 0) + n; });
    return into;
  }
  function addBatches(seen, p) { // a worker's second: its batches join the point's
    const exact = (seen.batches ? seen.queue && seen.compute : true) && p.queue && p.compute;
    seen.batch_sizes = mergeCounts(Object.assign({}, seen.batch_sizes), p.batch_sizes);
    seen.queue = exact ? mergeCounts(Object.assign({}, seen.queue), p.queue) : null;
    seen.compute = exact ? mergeCounts(Object.assign({}, seen.compute), p.compute) : null;
    seen.queue_p50_ms = exact ? percentileMs(seen.queue, 50) : seen.queue_p50_ms || p.queue_p50_ms;
    seen.compute_p50_ms = exact ? percentileMs(seen.compute, 50) : seen.compute_p50_ms || p.compute_p50_ms;
    seen.batches = (seen.batches || 0) + p.batches;
  }
  function add(p, merge) {
    const k = key(p);
    const seen = points.get(k);
    if (seen && merge && p.batches && !p.requests) {
      addBatches(seen, p);
    } else if (seen && merge && p.latency && (seen.latency || !seen.requests)) {
      seen.latency = seen.latency || {};
      seen.requests += p.requests;
      seen.errors += p.errors;
      Object.entries(p.latency).forEach(([i, n]) => { seen.latency[i] = (seen.latency[i] || 0) + n; });
      seen.p50_ms = percentileMs(seen.latency, 50);
      seen.p95_ms = percentileMs(seen.latency, 95);
      seen.p99_ms = percentileMs(seen.latency, 99);
    } else if (seen && merge) {
      // A stored point has no histogram; another gateway's live second adds to its counts,
      // and the larger percentile stands until the next re-read merges them exactly.
      seen.requests += p.requests;
      seen.errors += p.errors;
      for (const q of ["p50_ms", "p95_ms", "p99_ms"]) seen[q] = Math.max(seen[q] || 0, p[q] || 0);
    } else {
      const copy = Object.assign({}, p);
      ["latency", "queue", "compute"].forEach((h) => { if (p[h]) copy[h] = Object.assign({}, p[h]); });
      points.set(k, copy);
    }
  }
  function prune() {
    const oldest = Date.now() - spans[range];
    for (const [k, p] of points) if (Date.parse(p.t) < oldest) points.delete(k);
  }
  function series() {
    const byVersion = new Map();
    [...points.values()].sort((a, b) => Date.parse(a.t) - Date.parse(b.t)).forEach((p) => {
      const name = (model ? "" : p.model + " ") + "v" + p.version;
      if (!byVersion.has(name)) byVersion.set(name, { t: [], rps: [], err: [], p50: [], p95: [], p99: [], bt: [], queue: [], compute: [], sizes: new Map() });
      const s = byVersion.get(name);
      if (p.requests) {
        s.t.push(p.t);
        s.rps.push(p.requests / (p.step_s || 1));
        s.err.push(p.errors / p.requests);
        s.p50.push(p.p50_ms); s.p95.push(p.p95_ms); s.p99.push(p.p99_ms);
      }
      if (p.batches) { // from the workers' heartbeats
        s.bt.push(p.t); s.queue.push(p.queue_p50_ms); s.compute.push(p.compute_p50_ms);
        Object.entries(p.batch_sizes || {}).forEach(([size, n]) => s.sizes.set(Number(size), (s.sizes.get(Number(size)) || 0) + n));
      }
    });
    return byVersion;
  }
  const layout = (y) => {
    const now = Date.now();
    return { margin: { t: 10, r: 10, b: 40, l: 50 }, height: 240, legend: { orientation: "h" },
      xaxis: { type: "date", range: [new Date(now - spans[range]).toISOString(), new Date(now + 2000).toISOString()] },
      yaxis: { title: y, rangemode: "tozero" } };
  };
  const config = { displayModeBar: false, responsive: true };
  function draw() {
    const byVersion = series();
    const throughput = [], latency = [], errors = [], stages = [], sizes = [];
    byVersion.forEach((s, name) => {
      throughput.push({ x: s.t, y: s.rps, name: name, mode: "lines+markers", type: "scatter" });
      errors.push({ x: s.t, y: s.err, name: name, mode: "lines+markers", type: "scatter" });
      latency.push({ x: s.t, y: s.p50, name: name + " p50", mode: "lines+markers", type: "scatter" });
      latency.push({ x: s.t, y: s.p95, name: name + " p95", mode: "lines+markers", type: "scatter", line: { dash: "dot" } });
      latency.push({ x: s.t, y: s.p99, name: name + " p99", mode: "lines+markers", type: "scatter", line: { dash: "dash" } });
      stages.push({ x: s.bt, y: s.queue, name: name + " queue", mode: "lines+markers", type: "scatter", line: { dash: "dot" } });
      stages.push({ x: s.bt, y: s.compute, name: name + " compute", mode: "lines+markers", type: "scatter" });
      const order = [...s.sizes.keys()].sort((a, b) => a - b);
      sizes.push({ x: order.map(String), y: order.map((k) => s.sizes.get(k)), name: name, type: "bar" });
    });
    Plotly.react("chart-throughput", throughput, layout("req/s"), config);
    Plotly.react("chart-latency", latency, layout("ms"), config);
    Plotly.react("chart-errors", errors, layout("share"), config);
    Plotly.react("chart-stages", stages, layout("ms"), config);
    Plotly.react("chart-batches", sizes, { margin: { t: 10, r: 10, b: 40, l: 50 }, height: 240, barmode: "group",
      xaxis: { title: "batch size", type: "category" }, yaxis: { title: "batches", rangemode: "tozero" }, legend: { orientation: "h" } }, config);
  }
  async function load() {
    const mine = ++loading;
    const query = new URLSearchParams({ range: range });
    if (model) query.set("model", model);
    const answer = await fetch(`/api/v1/tenants/${tenant}/metrics/?${query}`, { credentials: "same-origin" });
    if (!answer.ok) { status.textContent = `could not load the series (${answer.status})`; return; }
    const body = await answer.json();
    if (mine !== loading) return; // a later range was chosen meanwhile
    points.clear();
    body.points.forEach((p) => add(p, false));
    draw();
    live.ready = true;
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/tenants/${tenant}/metrics/${model ? "?model=" + encodeURIComponent(model) : ""}`);
    socket.onopen = () => { status.textContent = "live"; retry = 1000; };
    socket.onclose = (event) => {
      if (event.code === 4401 || event.code === 4404) { status.textContent = "not signed in, or no access to this tenant"; return; }
      status.textContent = "disconnected; reconnecting…";
      setTimeout(() => { load().catch(() => {}).finally(connect); }, retry + Math.random() * 1000); // refetch what was missed
      retry = Math.min(retry * 2, 30000);
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type !== "metrics.update") return;
      const step = steps[range]; // live seconds join the range's points (1 s, 5 s, 2 min, 1 h)
      message.points.forEach((p) => {
        const t = new Date(Math.floor(Date.parse(p.t) / (step * 1000)) * step * 1000).toISOString();
        add(Object.assign({}, p, { t: t, step_s: step }), true);
      });
      prune();
      const latest = message.points[message.points.length - 1];
      live.updates += 1;
      live.lastPointTime = latest.t;
      live.lastRequests = message.points.reduce((n, p) => n + p.requests, 0);
      draw();
    };
  }
  document.querySelectorAll("button.range").forEach((button) => {
    button.addEventListener("click", () => {
      document.querySelectorAll("button.range").forEach((b) => b.classList.remove("active"));
      button.classList.add("active");
      range = button.dataset.range;
      load();
    });
  });
  load().catch(() => {}).finally(connect);
  // Worker figures (batches, queue vs compute) and server-merged percentiles come with the
  // series; re-read it now and then while the range is live.
  let ticks = 0; // re-read every 15 s (30 d: every 5 min; its points are an hour wide)
  setInterval(() => { ticks += 1; if (range !== "30d" || ticks % 20 === 0) load(); }, 15000);
})();
