// The tenant dashboard's slower figures: cost per prediction (usage API) and, for one model,
// accuracy or MAE from feedback per version (accuracy API). Re-read every minute.
(function () {
  "use strict";
  const root = document.getElementById("dashboard");
  const tenant = root.dataset.tenant;
  const model = root.dataset.model;
  const quality = (window.berthQuality = { usageLoaded: false, accuracyLoaded: false });

  function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }

  async function usage() {
    const query = new URLSearchParams();
    if (model) query.set("model", model);
    const answer = await fetch(`/api/v1/tenants/${tenant}/usage/?${query}`, { credentials: "same-origin" });
    if (!answer.ok) return;
    const body = await answer.json();
    const rows = document.getElementById("cost-rows");
    rows.replaceChildren();
    body.models.forEach((line) => {
      const tr = document.createElement("tr");
      [line.model, "v" + line.version, String(line.predictions), line.device_s.toFixed(3),
        line.cost + " " + body.currency, line.cost_per_1000 === null ? "–" : line.cost_per_1000 + " " + body.currency]
        .forEach((text) => tr.appendChild(cell(text)));
      rows.appendChild(tr);
    });
    document.getElementById("cost-total").textContent =
      `${body.total.cost} ${body.currency} for ${body.total.predictions} predictions, ${body.from} to ${body.to}`;
    quality.usageLoaded = true;
  }

  async function accuracy() {
    if (!model) return;
    const answer = await fetch(`/api/v1/tenants/${tenant}/models/${encodeURIComponent(model)}/accuracy/?range=7d`,
      { credentials: "same-origin" });
    if (!answer.ok) return;
    const body = await answer.json();
    const byVersion = new Map();
    body.points.forEach((p) => {
      if (!byVersion.has(p.version)) byVersion.set(p.version, { t: [], y: [] });
      const s = byVersion.get(p.version);
      s.t.push(p.t);
      s.y.push(p.accuracy !== null ? p.accuracy : p.mae);
    });
    const traces = [...byVersion.entries()].map(([version, s]) => ({ x: s.t, y: s.y, name: "v" + version, mode: "lines+markers", type: "scatter" }));
    const title = body.task === "regression" ? "mean absolute error" : "accuracy";
    Plotly.react("chart-accuracy", traces, { margin: { t: 10, r: 10, b: 40, l: 50 }, height: 240, legend: { orientation: "h" },
      xaxis: { type: "date", range: [new Date(Date.now() - 7 * 86400e3).toISOString(), new Date().toISOString()] },
      yaxis: { title: title, rangemode: "tozero" } }, { displayModeBar: false, responsive: true });
    const summary = body.versions.map((v) => `v${v.version}: ${v.accuracy !== null ? (v.accuracy * 100).toFixed(1) + "%" : "MAE " + v.mae} over ${v.rows} rows`);
    document.getElementById("accuracy-summary").textContent = summary.length ? summary.join(" · ") : "no feedback in the last 7 days";
    quality.accuracyLoaded = true;
  }

  function refresh() { usage(); accuracy(); }
  refresh();
  setInterval(refresh, 60000);
})();
