// A tenant's live dashboard: history from the series API, then points from the WebSocket.
(function () {
  "use strict";
  const root = document.getElementById("dashboard");
  const tenant = root.dataset.tenant;
  const model = root.dataset.model;
  const status = document.getElementById("live-status");
  const points = new Map(); // "t|model|version" -> point (points of one key from several gateways add up)
  let range = "15m";
  const live = (window.berthDashboard = { ready: false, updates: 0, lastPointTime: null, lastRequests: 0 });

  function key(p) { return p.t + "|" + p.model + "|" + p.version; }
  function add(p, merge) {
    const k = key(p);
    const seen = points.get(k);
    if (seen && merge) {
      seen.requests += p.requests;
      seen.errors += p.errors;
      // Percentiles cannot be added; the larger of the gateways' is the honest upper view.
      for (const q of ["p50_ms", "p95_ms", "p99_ms"]) seen[q] = Math.max(seen[q] || 0, p[q] || 0);
    } else {
      points.set(k, Object.assign({}, p));
    }
  }
  function series() {
    const byVersion = new Map();
    const seconds = range === "15m" || range === "1h" ? 1 : 60;
    [...points.values()].sort((a, b) => (a.t < b.t ? -1 : 1)).forEach((p) => {
      const name = (model ? "" : p.model + " ") + "v" + p.version;
      if (!byVersion.has(name)) byVersion.set(name, { t: [], rps: [], err: [], p50: [], p95: [], p99: [] });
      const s = byVersion.get(name);
      s.t.push(p.t);
      s.rps.push(p.requests / seconds);
      s.err.push(p.requests ? p.errors / p.requests : 0);
      s.p50.push(p.p50_ms); s.p95.push(p.p95_ms); s.p99.push(p.p99_ms);
    });
    return byVersion;
  }
  const spans = { "15m": 15 * 60e3, "1h": 3600e3, "24h": 86400e3, "30d": 30 * 86400e3 };
  const layout = (y) => {
    const now = Date.now();
    return { margin: { t: 10, r: 10, b: 40, l: 50 }, height: 240, legend: { orientation: "h" },
      xaxis: { type: "date", range: [new Date(now - spans[range]).toISOString(), new Date(now + 2000).toISOString()] },
      yaxis: { title: y, rangemode: "tozero" } };
  };
  const config = { displayModeBar: false, responsive: true };
  function draw() {
    const byVersion = series();
    const throughput = [], latency = [], errors = [];
    byVersion.forEach((s, name) => {
      throughput.push({ x: s.t, y: s.rps, name: name, mode: "lines+markers", type: "scatter" });
      errors.push({ x: s.t, y: s.err, name: name, mode: "lines+markers", type: "scatter" });
      latency.push({ x: s.t, y: s.p50, name: name + " p50", mode: "lines+markers", type: "scatter" });
      latency.push({ x: s.t, y: s.p95, name: name + " p95", mode: "lines+markers", type: "scatter", line: { dash: "dot" } });
      latency.push({ x: s.t, y: s.p99, name: name + " p99", mode: "lines+markers", type: "scatter", line: { dash: "dash" } });
    });
    Plotly.react("chart-throughput", throughput, layout("req/s"), config);
    Plotly.react("chart-latency", latency, layout("ms"), config);
    Plotly.react("chart-errors", errors, layout("share"), config);
  }
  async function load() {
    const query = new URLSearchParams({ range: range });
    if (model) query.set("model", model);
    const answer = await fetch(`/api/v1/tenants/${tenant}/metrics/?${query}`, { credentials: "same-origin" });
    const body = await answer.json();
    points.clear();
    body.points.forEach((p) => add(p, false));
    draw();
    live.ready = true;
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/tenants/${tenant}/metrics/${model ? "?model=" + encodeURIComponent(model) : ""}`);
    socket.onopen = () => { status.textContent = "live"; };
    socket.onclose = () => { status.textContent = "disconnected; reconnecting…"; setTimeout(connect, 2000); };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type !== "metrics.update" || (range !== "15m" && range !== "1h")) return;
      message.points.forEach((p) => add(p, true));
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
  load().then(connect);
})();
