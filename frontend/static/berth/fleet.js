// The fleet (staff): each device a bar of its memory, each hosted replica a segment, live.
(function () {
  "use strict";
  const status = document.getElementById("fleet-status");
  const body = document.querySelector("#fleet-table tbody");
  const MiB = 1024 * 1024;
  window.berthFleet = { updates: 0 };
  let retry = 1000;
  function draw(devices) {
    const labels = devices.map((d) => d.worker);
    const segments = new Map(); // "tenant/model@v" -> per-device reserved MiB
    devices.forEach((d, i) => d.replicas.forEach((r) => {
      const name = `${r.tenant}/${r.model}@v${r.version}`;
      if (!segments.has(name)) segments.set(name, new Array(devices.length).fill(0));
      segments.get(name)[i] += r.reserved_bytes / MiB;
    }));
    const traces = [...segments].map(([name, values]) => ({ type: "bar", orientation: "h", y: labels, x: values, name: name }));
    traces.push({ type: "bar", orientation: "h", y: labels, name: "free", marker: { color: "#e3e6ec" },
      x: devices.map((d) => Math.max(d.capacity_bytes - d.reserved_bytes, 0) / MiB) });
    traces.push({ type: "scatter", mode: "markers", y: labels, name: "measured use", marker: { symbol: "line-ns-open", size: 24, color: "#d13f3f" },
      x: devices.map((d) => d.used_bytes / MiB) });
    Plotly.react("chart-fleet", traces, { barmode: "stack", height: 120 + 60 * devices.length, margin: { l: 140, r: 10, t: 10, b: 40 }, xaxis: { title: "MiB" }, legend: { orientation: "h" } }, { displayModeBar: false, responsive: true });
    body.replaceChildren(...devices.map((d) => {
      const row = document.createElement("tr");
      const cells = [d.worker + " · " + d.device + (d.utilisation_pct == null ? "" : ` (${d.utilisation_pct.toFixed(0)} % busy)`), d.state, (d.reserved_bytes / MiB).toFixed(0) + " MiB", (d.used_bytes / MiB).toFixed(0) + " MiB",
        (d.capacity_bytes / MiB).toFixed(0) + " MiB", d.replicas.map((r) => `${r.tenant}/${r.model}@v${r.version} (${r.state})`).join(", ")];
      cells.forEach((text) => { const cell = document.createElement("td"); cell.textContent = text; row.appendChild(cell); });
      return row;
    }));
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/fleet/`);
    socket.onopen = () => { status.textContent = "live"; retry = 1000; };
    socket.onclose = (event) => {
      if (event.code === 4401 || event.code === 4404) { status.textContent = "for platform staff only"; return; }
      status.textContent = "disconnected; reconnecting…";
      setTimeout(connect, retry + Math.random() * 1000);
      retry = Math.min(retry * 2, 30000);
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "fleet.update") { window.berthFleet.updates += 1; draw(message.devices); }
    };
  }
  // Stored per-device series (measured use and reserved per device; utilisation), re-read each 30 s.
  let range = "1h";
  window.berthFleet.seriesLoaded = 0;
  async function history() {
    const answer = await fetch(`/api/v1/devices/series/?range=${range}`, { credentials: "same-origin" });
    if (!answer.ok) return;
    const body = await answer.json();
    const byWorker = new Map();
    body.points.forEach((p) => {
      if (!byWorker.has(p.worker)) byWorker.set(p.worker, { t: [], used: [], reserved: [], busy: [] });
      const s = byWorker.get(p.worker);
      s.t.push(p.t); s.used.push(p.used_bytes / MiB); s.reserved.push(p.reserved_bytes / MiB); s.busy.push(p.utilisation_pct);
    });
    const memory = [], busy = [];
    byWorker.forEach((s, worker) => {
      memory.push({ x: s.t, y: s.used, name: worker + " measured", mode: "lines", type: "scatter" });
      memory.push({ x: s.t, y: s.reserved, name: worker + " reserved", mode: "lines", type: "scatter", line: { dash: "dot" } });
      busy.push({ x: s.t, y: s.busy, name: worker, mode: "lines", type: "scatter" });
    });
    const layout = (y) => ({ margin: { t: 10, r: 10, b: 40, l: 60 }, height: 240, legend: { orientation: "h" }, xaxis: { type: "date" }, yaxis: { title: y, rangemode: "tozero" } });
    Plotly.react("chart-device-memory", memory, layout("MiB"), { displayModeBar: false, responsive: true });
    Plotly.react("chart-device-busy", busy, layout("% busy"), { displayModeBar: false, responsive: true });
    window.berthFleet.seriesLoaded += 1;
  }
  document.querySelectorAll("button.range").forEach((button) => button.addEventListener("click", () => {
    document.querySelectorAll("button.range").forEach((b) => b.classList.remove("active"));
    button.classList.add("active");
    range = button.dataset.range;
    history();
  }));
  connect();
  history();
  setInterval(history, 30000);
})();
