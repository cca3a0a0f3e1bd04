// The status page's script: re-renders from /status?full=1 every few seconds and filters as
// you type. Data is only ever written with textContent (names come from Tapis: hostile).
"use strict";
(function () {
  const REFRESH_MS = 3000;
  document.documentElement.dataset.js = "on";
  const body = document.body;
  const webodmUrl = body.dataset.webodmUrl;
  const stuckAfterMs = Number(body.dataset.stuckAfterMs);
  const $ = (id) => document.getElementById(id);
  const form = $("filter"), fPhase = $("f-phase"), fSystem = $("f-system"), fQ = $("f-q");
  let snapshot = null;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function rank(r) {
    if (r.last_error || r.listing_error || r.notice || r.phase === "failed" || r.phase === "deleted_in_webodm") return 0;
    if (["completed", "results_written", "canceled", "vanished"].includes(r.phase)) return 2;
    return 1;
  }

  function matches(r, f) {
    const phaseOk = !f.phase || (f.phase === "problems" ? rank(r) === 0 : r.phase === f.phase);
    const systemOk = !f.system || r.system_id === f.system;
    const hay = [r.system_id, r.flight_name, r.last_error || "", r.listing_error || "", r.notice || "",
      (r.shared_with || []).join("\n")]
      .join("\n").toLowerCase();
    const qOk = f.q.split(/\s+/).filter(Boolean).every((w) => hay.includes(w.toLowerCase()));
    return phaseOk && systemOk && qOk;
  }

  function webodmLink(r) {
    const u = new URL(webodmUrl);
    u.search = "";
    u.hash = "";
    const base = u.pathname.replace(/\/+$/, "");
    const processed = r.phase === "completed" || r.phase === "results_written";
    if (processed && r.project_id !== null && r.task_id) {
      u.pathname = base + "/map/project/" + encodeURIComponent(r.project_id) + "/task/" +
        encodeURIComponent(r.task_id) + "/";
    } else {
      u.pathname = base + "/dashboard/";
    }
    return u;
  }

  function parseTime(t) { const ms = Date.parse(t); return Number.isNaN(ms) ? null : ms; }

  function relative(ms) {
    let secs = Math.round(Math.abs(Date.now() - ms) / 1000);
    const parts = [];
    for (const [n, unit] of [[86400, "d"], [3600, "h"], [60, "m"], [1, "s"]]) {
      if (secs >= n && parts.length < 2) { parts.push(Math.floor(secs / n) + unit); secs %= n; }
    }
    const d = parts.length ? parts.join(" ") : "0s";
    return ms <= Date.now() ? d + " ago" : "in " + d;
  }

  function when(t) {
    const ms = parseTime(t);
    const shown = String(t).replace("T", " ").replace("Z", " UTC");
    return ms === null ? shown : shown + " (" + relative(ms) + ")";
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(2) : String(n)) + " " + units[i];
  }

  function took(ms) {
    if (ms < 10000) return (ms / 1000).toFixed(1) + " s";
    const s = Math.floor(ms / 1000);
    return (s >= 3600 ? Math.floor(s / 3600) + "h " : "") + (s >= 60 ? Math.floor(s / 60) % 60 + "m " : "") + (s % 60) + "s";
  }

  function filterNow() {
    return { phase: fPhase.value, system: fSystem.value, q: fQ.value };
  }

  function renderHeader(s) {
    $("updated").replaceChildren("Snapshot " + when(s.written_at) + " · ",
      el("span", null, s.next_pass_at ? "next pass " + when(s.next_pass_at) : "a pass is running"));
    $("updated").lastChild.id = "next-pass";
  }

  function renderSummary(s) {
    const ul = el("ul", "chips");
    const chip = (cls, n, label) => { const li = el("li", cls); li.append(el("b", null, n), " " + label); return li; };
    ul.append(chip("chip", s.flights.length, "flights"));
    const counts = new Map();
    for (const r of s.flights) counts.set(r.phase, (counts.get(r.phase) || 0) + 1);
    for (const p of [...counts.keys()].sort()) ul.append(chip("chip phase-" + p, counts.get(p), p));
    $("summary").replaceChildren(ul);
  }

  function renderPasses(s) {
    const tbody = $("pass-rows");
    const rows = [];
    if (!s.passes.length) {
      const tr = el("tr", "empty"), td = el("td", null, "No pass finished yet.");
      td.colSpan = 9; tr.append(td); rows.push(tr);
    }
    for (const p of s.passes) {
      const errors = Math.max(p.errors_total || 0, p.errors.length);
      const tr = el("tr", "pass" + (errors ? " has-errors" : ""));
      tr.append(el("td", null, when(p.finished_at)), el("td", null, took(p.duration_ms)),
        el("td", null, p.systems_scanned), el("td", null, p.flights_discovered),
        el("td", null, p.projects_created + " projects, " + p.tasks_created + " tasks"),
        el("td", null, p.images_uploaded + " images (" + bytes(p.bytes_uploaded) + ")"),
        el("td", null, p.tasks_committed),
        el("td", null, (p.grants_added || 0) + " grants, " + (p.tasks_restarted || 0) + " restarts, " +
          (p.results_written || 0) + " results (" + bytes(p.result_bytes || 0) + ")"));
      const td = el("td", "errors", errors ? null : "0");
      if (errors) {
        const det = el("details"), ul = el("ul");
        det.append(el("summary", null, errors));
        for (const e of p.errors) ul.append(el("li", null, e));
        if (errors > p.errors.length) ul.append(el("li", null, "… and " + (errors - p.errors.length) + " more"));
        det.append(ul); td.append(det);
      }
      tr.append(td); rows.push(tr);
    }
    tbody.replaceChildren(...rows);
  }

  function renderSystems(s) {
    const systems = [...new Set(s.flights.map((r) => r.system_id))].sort();
    const chosen = fSystem.value;
    if (chosen && !systems.includes(chosen)) systems.push(chosen);
    const opts = [el("option", null, "all")];
    opts[0].value = "";
    for (const id of systems) { const o = el("option", null, id); o.value = id; opts.push(o); }
    fSystem.replaceChildren(...opts);
    fSystem.value = chosen;
  }

  function sharedText(r) {
    let text = (r.shared_with || []).join(", ");
    if ((r.access_waiting || []).length) {
      text += (text ? "; " : "") + "waiting for WebODM account: " + r.access_waiting.join(", ");
    }
    return text;
  }

  function renderRow(r) {
    const tr = el("tr", "flight rank-" + rank(r));
    tr.dataset.phase = r.phase;
    tr.dataset.system = r.system_id;
    const phase = el("td", "phase");
    phase.append(el("span", "badge phase-" + r.phase, r.phase));
    const since = r.error_since ? parseTime(r.error_since) : null;
    if (r.last_error && since !== null && Date.now() - since >= stuckAfterMs) {
      phase.append(" ", el("span", "badge stuck", "stuck"));
    }
    const images = el("td", "images"), bar = el("progress");
    bar.max = Math.max(r.images_total, 1);
    bar.value = r.images_uploaded;
    images.append(bar, " ", el("span", "count", r.images_uploaded + "/" + r.images_total));
    const link = el("td", "link"), a = el("a");
    const url = webodmLink(r);
    a.href = url.href;
    a.textContent = r.project_id === null ? "dashboard"
      : (url.pathname.includes("/map/") ? "map of project " : "project ") + r.project_id;
    link.append(a);
    const err = el("td", "error");
    if (r.listing_error) err.append(el("span", "message", "listing failed: " + r.listing_error));
    if (r.last_error) {
      err.append(el("span", "message", r.last_error));
      if (r.error_since) err.append(el("span", "when", "since " + when(r.error_since)));
      if (r.next_attempt_at) err.append(el("span", "when", "next attempt " + when(r.next_attempt_at)));
    }
    if (r.notice) err.append(el("span", "message", r.notice));
    tr.append(el("td", "system", r.system_id), el("td", "flight-name", r.flight_name), phase, images,
      link, el("td", "shared", sharedText(r)), err);
    return tr;
  }

  function renderFlights(s) {
    const f = filterNow();
    const rows = s.flights.filter((r) => matches(r, f));
    rows.sort((a, b) => rank(a) - rank(b) || (a.system_id < b.system_id ? -1 : a.system_id > b.system_id ? 1 : 0) ||
      (a.flight_name < b.flight_name ? -1 : a.flight_name > b.flight_name ? 1 : 0));
    $("flight-rows").replaceChildren(...rows.map(renderRow));
    $("shown").textContent = rows.length + " of " + s.flights.length + " flights";
  }

  function render() {
    if (!snapshot) return;
    renderHeader(snapshot);
    renderSummary(snapshot);
    renderPasses(snapshot);
    renderSystems(snapshot);
    renderFlights(snapshot);
    body.dataset.renderedAt = snapshot.written_at;
  }

  function syncUrl() {
    const f = filterNow(), params = new URLSearchParams();
    for (const k of ["phase", "system", "q"]) if (f[k]) params.set(k, f[k]);
    const qs = params.toString();
    history.replaceState(null, "", qs ? "?" + qs : location.pathname);
  }

  async function refresh() {
    try {
      const resp = await fetch("/status?full=1", { cache: "no-store" });
      if (resp.ok) { snapshot = await resp.json(); render(); }
    } catch (e) {
      $("updated").textContent = "cannot reach the daemon: " + e;
    }
  }

  for (const input of [fPhase, fSystem]) input.addEventListener("change", () => { syncUrl(); if (snapshot) renderFlights(snapshot); });
  fQ.addEventListener("input", () => { syncUrl(); if (snapshot) renderFlights(snapshot); });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); syncUrl(); if (snapshot) renderFlights(snapshot); });

  const control = $("control");
  control.hidden = false;
  $("pass-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = $("pass-result");
    try {
      const resp = await fetch("/pass", { method: "POST", headers: { Authorization: "Bearer " + $("token").value.trim() } });
      out.textContent = resp.status === 202 ? "pass requested" : "refused (" + resp.status + "): " + (await resp.text());
      if (resp.status === 202) setTimeout(refresh, 500);
    } catch (e) {
      out.textContent = "failed: " + e;
    }
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
