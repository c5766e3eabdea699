// popgw console: the live page's stream, filters, pause and rate. Records are put into
// the page with textContent only: nothing a record holds is ever parsed as HTML.
"use strict";
(function () {
  const table = document.getElementById("live");
  if (!table) return;
  const body = table.tBodies[0];
  const form = document.getElementById("live-filters");
  const pause = document.getElementById("pause");
  const rate = document.getElementById("rate");
  const shown = document.getElementById("shown");
  const state = document.getElementById("live-state");
  const MAX_ROWS = 500, MAX_HELD = 5000;
  let paused = false;
  let held = [];
  const arrivals = [];

  const filters = () => ({
    client: form.elements.client.value.trim(),
    procedure: form.elements.procedure.value.trim().toUpperCase(),
    outcome: form.elements.outcome.value.trim().toUpperCase(),
    cache: form.elements.cache.value,
  });
  const accepts = (r, f) =>
    (!f.client || r.client.includes(f.client)) &&
    (!f.procedure || r.procedure === f.procedure) &&
    (!f.outcome || r.outcome === f.outcome || r.code === f.outcome) &&
    (!f.cache || r.cache === f.cache);

  function row(r) {
    const tr = document.createElement("tr");
    tr.className = "record" + (r.code !== "OK" ? " refused" : "");
    tr.dataset.request = r.request_id;
    tr.dataset.client = r.client;
    tr.dataset.procedure = r.procedure;
    tr.dataset.outcome = r.outcome;
    tr.dataset.code = r.code;
    tr.dataset.cache = r.cache;
    const cells = [r.seq, r.time, r.node, r.client, r.rpc, r.procedure, r.outcome, r.cache, r.latency_ms, r.subject.slice(0, 16)];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = String(v);
      if (i === 6) td.className = "outcome";
      if (i === 8) td.className = "num";
      tr.appendChild(td);
    });
    return tr;
  }

  function show(r) {
    const tr = row(r);
    tr.hidden = !accepts(r, filters());
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    count();
  }

  function count() {
    let n = 0;
    for (const tr of body.rows) if (!tr.hidden) n++;
    shown.textContent = String(n);
  }

  function refilter() {
    const f = filters();
    for (const tr of body.rows) {
      const d = tr.dataset;
      tr.hidden = !accepts({ client: d.client, procedure: d.procedure, outcome: d.outcome, code: d.code, cache: d.cache }, f);
    }
    count();
  }
  form.addEventListener("input", refilter);
  form.addEventListener("submit", (e) => e.preventDefault());

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? pause.dataset.resume : pause.dataset.pause;
    if (!paused) {
      held.forEach(show);
      held = [];
    }
  });

  setInterval(() => {
    const now = Date.now();
    while (arrivals.length && arrivals[0] < now - 10000) arrivals.shift();
    rate.textContent = (arrivals.length / 10).toFixed(1);
    if (paused) state.textContent = "· " + held.length + " " + state.dataset.held;
    else if (state.textContent.startsWith("·")) state.textContent = "";
  }, 1000);

  const source = new EventSource("/live/stream");
  source.onmessage = (e) => {
    const r = JSON.parse(e.data);
    arrivals.push(Date.now());
    if (paused) {
      if (held.length < MAX_HELD) held.push(r);
    } else {
      show(r);
    }
  };
  source.addEventListener("end", (e) => { state.textContent = e.data; });
})();
