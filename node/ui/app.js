// ringkv dashboard: follows /v1/dashboard/stream (one cluster view a
// second, gathered by the node that serves this page) and draws it. Key
// tools use the REST API of the same node. No library, no build step.
"use strict";

const COLOURS = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000"];
const HISTORY_SECONDS = 300;
const $ = (sel) => document.querySelector(sel);

let latest = null;          // the latest view
const history = [];         // [{t, ops: {name: {count, cumulative}}}] summed over nodes
let partitionSort = { key: "partition", dir: 1 };

// Builds an element: el("td", {class: "x"}, "text", child...).
function el(tag, attrs, ...children) {
  const isSvg = ["svg", "circle", "line", "polyline", "text", "g", "path", "title"].includes(tag);
  const e = isSvg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function colour(node) { return COLOURS[(node - 1) % COLOURS.length]; }
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}
function count(n) { return n.toLocaleString("en-US"); }

// ---- live stream ----

function connect() {
  const source = new EventSource("/v1/dashboard/stream");
  const status = $("#connection");
  source.addEventListener("snapshot", (e) => {
    status.dataset.state = "live";
    status.textContent = "live";
    $("#token-form").hidden = true;
    render(JSON.parse(e.data));
  });
  source.onerror = async () => {
    status.dataset.state = "lost";
    status.textContent = "connection to this node lost; retrying";
    // A refused stream is not retried by the browser: ask why.
    if (source.readyState !== EventSource.CLOSED) return;
    let refused = false;
    try { refused = (await fetch("/v1/dashboard/cluster")).status === 401; } catch { /* node down */ }
    if (refused) {
      status.dataset.state = "locked";
      status.textContent = "this cluster requires an access token (ringkv auth add --role read)";
      $("#token-form").hidden = false;
    } else {
      setTimeout(connect, 1000);
    }
  };
}

// The token goes in a cookie the node reads on the dashboard's own reads
// (an EventSource cannot send an Authorization header); SameSite=Strict
// keeps other sites' pages from sending it. The key tools send it as a
// header (the node takes the cookie nowhere else).
function authHeaders(headers) {
  const m = document.cookie.match(/(?:^|;\s*)ringkv_token=([^;]*)/);
  return m ? { ...headers, Authorization: "Bearer " + decodeURIComponent(m[1]) } : headers;
}

$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `ringkv_token=${encodeURIComponent($("#token").value.trim())}; path=/; SameSite=Strict${secure}`;
  $("#token").value = "";
  connect();
});

function render(view) {
  latest = view;
  status_title(view);
  record(view);
  renderSummary(view);
  renderNodes(view);
  renderRing(view);
  renderTraffic(view);
  renderPartitions(view);
  renderMoves(view);
  renderEvents(view);
}

function status_title(view) {
  const down = view.nodes.filter((n) => n.status === "down" || n.status === "dead").length;
  document.title = (down ? `(${down} down) ` : "") + `ringkv: node ${view.answered_by}`;
}

// ---- summary ----

function renderSummary(view) {
  const live = view.nodes.filter((n) => n.status !== "removed");
  const up = live.filter((n) => n.status === "up").length;
  const leaderless = view.partitions.filter((p) => p.known && p.leader === null).length;
  const unknown = view.partitions.filter((p) => !p.known).length;
  const lagging = view.partitions.filter((p) => p.under_replicated).length;
  const keys = view.partitions.reduce((s, p) => s + p.keys, 0);
  const cards = [
    ["nodes up", `${up} / ${live.length}`, up < live.length ? "bad" : ""],
    ["partitions", count(view.partitions.length), ""],
    ["leaderless", count(leaderless), leaderless ? "bad" : ""],
    ["unknown", count(unknown), unknown ? "warn" : ""],
    ["under-replicated", count(lagging), lagging ? "warn" : ""],
    ["moves", count(view.moves.length), view.moves.length ? "warn" : ""],
    ["keys", count(keys), ""],
    ["controller", view.controller === null ? "–" : `node ${view.controller}`, view.controller === null ? "warn" : ""],
  ];
  $("#summary").replaceChildren(...cards.map(([label, value, level]) =>
    el("div", { "data-level": level || null, "data-card": label }, el("b", {}, value), label)));
}

// ---- nodes ----

function nodeRate(node) {
  // Requests per second over the last ~10 s, from this node's counters.
  const h = nodeHistory.get(node.id) || [];
  if (h.length < 2) return null;
  const a = h[Math.max(0, h.length - 11)], b = h[h.length - 1];
  const dt = (b.t - a.t) / 1000;
  return dt > 0 ? (b.total - a.total) / dt : null;
}
const nodeHistory = new Map();

function renderNodes(view) {
  const rows = view.nodes.map((n) => {
    const rate = nodeRate(n);
    const heard = n.last_heard_seconds_ago === null ? (n.id === view.answered_by ? "this node" : "–")
      : `${n.last_heard_seconds_ago.toFixed(1)} s ago`;
    const addrs = [n.rest_addr && `REST ${n.rest_addr}`, n.grpc_addr && `gRPC ${n.grpc_addr}`, n.resp_addr && `RESP ${n.resp_addr}`]
      .filter(Boolean).join(" · ");
    const name = el("td", {}, el("span", { class: "swatch", style: `background:${colour(n.id)}` }), `node ${n.id}`);
    return el("tr", { "data-node": n.id, "data-status": n.status },
      name,
      el("td", { class: "status", "data-status": n.status }, n.status + (n.answered ? "" : " (no answer)")),
      el("td", {}, heard),
      el("td", {}, n.partitions_held),
      el("td", {}, n.partitions_led),
      el("td", {}, count(n.keys)),
      el("td", {}, bytes(n.wal_bytes)),
      el("td", {}, bytes(n.snapshot_bytes)),
      el("td", {}, rate === null ? "–" : rate.toFixed(0)),
      el("td", {}, addrs));
  });
  $("#nodes tbody").replaceChildren(...rows);
}

// ---- ring ----

function renderRing(view) {
  const svg = $("#ring");
  const R = 120;
  const parts = [el("title", { id: "ring-title" }, "The consistent-hash ring: node tokens outside, partitions inside")];
  parts.push(el("circle", { r: R, fill: "none", stroke: "currentColor", "stroke-opacity": 0.3 }));
  for (const [pos, node] of view.ring.tokens) {
    const a = pos * 2 * Math.PI - Math.PI / 2;
    parts.push(el("line", {
      x1: Math.cos(a) * (R + 4), y1: Math.sin(a) * (R + 4), x2: Math.cos(a) * (R + 16), y2: Math.sin(a) * (R + 16),
      stroke: colour(node), "stroke-width": 2,
    }));
  }
  const n = view.partitions.length;
  for (const p of view.partitions) {
    const a = (p.partition / n) * 2 * Math.PI - Math.PI / 2;
    const fill = p.leader === null ? "none" : colour(p.leader);
    const dot = el("circle", {
      cx: Math.cos(a) * (R - 10), cy: Math.sin(a) * (R - 10), r: Math.max(2, Math.min(6, 300 / n)),
      fill, stroke: p.leader === null ? "currentColor" : "none", "data-partition": p.partition,
    }, el("title", {}, `partition ${p.partition}, slots ${p.slots[0]}-${p.slots[1]}, leader ${p.leader ?? "none"}, replicas ${p.replicas.join(", ")}`));
    parts.push(dot);
  }
  parts.push(el("text", { "text-anchor": "middle", y: -4 }, `${n} partitions`));
  parts.push(el("text", { "text-anchor": "middle", y: 10 }, `${view.ring.tokens_per_node} tokens per node`));
  svg.replaceChildren(...parts);
  $("#ring-legend").replaceChildren(...view.ring.members.map((m) =>
    el("li", {}, el("span", { class: "swatch", style: `background:${colour(m)}` }), `node ${m}`)),
    el("li", {}, "● partition, coloured by its leader; ○ no leader"));
  const rf = view.replication_factor;
  const previews = [el("li", {}, `A node joining: ${view.ring.join.partitions} partitions change, ${view.ring.join.replicas} replicas to copy (of ${n * rf}).`)];
  for (const [node, m] of view.ring.drains) {
    previews.push(el("li", {}, m.replicas === 0 && m.partitions > 0
      ? `Draining node ${node}: ${m.partitions} partitions would lose a replica (no other node to take it).`
      : `Draining node ${node}: ${m.partitions} partitions change, ${m.replicas} replicas to copy.`));
  }
  $("#ring-preview").replaceChildren(...previews);
}

// ---- traffic ----

function record(view) {
  const ops = {};
  for (const node of view.nodes) {
    let total = 0;
    for (const o of node.operations) {
      const c = o.ok + o.refused + o.unavailable + o.unknown;
      total += c;
      const sum = ops[o.name] || (ops[o.name] = { count: 0, cumulative: o.cumulative.map(() => 0) });
      sum.count += c;
      o.cumulative.forEach((v, i) => { sum.cumulative[i] += v; });
    }
    const h = nodeHistory.get(node.id) || [];
    h.push({ t: view.at_unix_ms, total });
    while (h.length > 20) h.shift();
    nodeHistory.set(node.id, h);
  }
  history.push({ t: view.at_unix_ms, ops });
  while (history.length && history[0].t < view.at_unix_ms - HISTORY_SECONDS * 1000) history.shift();
}

// The latency at quantile q of the requests between two cumulative
// histograms, interpolated inside its bucket (ms).
function quantile(bounds, before, after, q) {
  const total = after[after.length - 1] - before[before.length - 1];
  if (total <= 0) return null;
  const target = q * total;
  let prevCount = 0, prevBound = 0;
  for (let i = 0; i < bounds.length; i++) {
    const c = after[i] - before[i];
    if (c >= target) {
      const inBucket = c - prevCount;
      const frac = inBucket > 0 ? (target - prevCount) / inBucket : 1;
      return (prevBound + (bounds[i] - prevBound) * frac) * 1000;
    }
    prevCount = c; prevBound = bounds[i];
  }
  return bounds[bounds.length - 1] * 1000;
}

function drawChart(svg, series, unit) {
  const W = 400, H = 140, left = 40, bottom = 18;
  const now = latest.at_unix_ms, start = now - HISTORY_SECONDS * 1000;
  let max = 0;
  for (const s of series) for (const [, v] of s.points) max = Math.max(max, v);
  max = max > 0 ? max * 1.1 : 1;
  const x = (t) => left + ((t - start) / (now - start)) * (W - left - 4);
  const y = (v) => H - bottom - (v / max) * (H - bottom - 8);
  const parts = [
    el("line", { class: "axis", x1: left, y1: H - bottom, x2: W, y2: H - bottom }),
    el("line", { class: "axis", x1: left, y1: 4, x2: left, y2: H - bottom }),
    el("text", { x: 2, y: 12 }, max >= 10 ? max.toFixed(0) : max.toFixed(2)),
    el("text", { x: 2, y: H - bottom }, "0"),
    el("text", { x: left, y: H - 4 }, "-5 min"),
    el("text", { x: W - 30, y: H - 4 }, "now"),
  ];
  for (const s of series) {
    if (s.points.length < 2) continue;
    parts.push(el("polyline", {
      points: s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
      fill: "none", stroke: s.colour, "stroke-width": 1.5,
    }, el("title", {}, `${s.name}: ${s.points[s.points.length - 1][1].toFixed(1)} ${unit}`)));
  }
  svg.replaceChildren(...parts);
}

function renderTraffic(view) {
  const names = [...new Set(view.nodes.flatMap((n) => n.operations.map((o) => o.name)))];
  const active = names.filter((name) => history.some((h) => h.ops[name] && h.ops[name].count > 0));
  const series = active.map((name, i) => {
    const points = [];
    for (let k = 1; k < history.length; k++) {
      const a = history[k - 1], b = history[k];
      const dt = (b.t - a.t) / 1000;
      if (dt > 0 && a.ops[name] && b.ops[name]) points.push([b.t, Math.max(0, (b.ops[name].count - a.ops[name].count) / dt)]);
    }
    return { name, colour: COLOURS[i % COLOURS.length], points };
  });
  drawChart($("#rate-chart"), series, "requests/s");
  $("#rate-legend").replaceChildren(...(series.length ? series.map((s) =>
    el("li", {}, el("span", { class: "swatch", style: `background:${s.colour}` }), s.name))
    : [el("li", {}, "no requests yet")]));

  const select = $("#latency-op");
  const options = active.length ? active : names;
  if ([...select.options].map((o) => o.value).join() !== options.join()) {
    const chosen = select.value;
    select.replaceChildren(...options.map((n) => el("option", { value: n }, n)));
    if (options.includes(chosen)) select.value = chosen;
  }
  const op = select.value;
  const p = (q) => {
    const points = [];
    for (let k = 5; k < history.length; k++) {
      // Over 5-second windows, so that a quiet second is not a hole.
      const a = history[k - 5].ops[op], b = history[k].ops[op];
      if (!a || !b) continue;
      const v = quantile(view.latency_buckets, a.cumulative, b.cumulative, q);
      if (v !== null) points.push([history[k].t, v]);
    }
    return points;
  };
  drawChart($("#latency-chart"), [
    { name: "p50", colour: "#0072b2", points: p(0.5) },
    { name: "p99", colour: "#d55e00", points: p(0.99) },
  ], "ms");
}

// ---- partitions ----

function partitionFlags(p) {
  const flags = [];
  if (!p.known) flags.push("unknown");
  else if (p.leader === null) flags.push("leaderless");
  if (p.under_replicated) flags.push("lagging");
  if (p.moving || p.learners.length || p.outgoing.length) flags.push("moving");
  return flags;
}
function maxLag(p) { return p.progress.reduce((m, r) => Math.max(m, r.lag ?? 0), 0); }

function renderPartitions(view) {
  const filter = $("#partition-filter").value.trim().toLowerCase();
  const matches = (p) => {
    if (!filter) return true;
    const flags = partitionFlags(p);
    if (/^\d+$/.test(filter)) return p.partition === Number(filter);
    const node = filter.match(/^node\s*(\d+)$/);
    if (node) return p.replicas.includes(Number(node[1])) || p.learners.includes(Number(node[1]));
    return flags.some((f) => f.startsWith(filter));
  };
  const value = {
    partition: (p) => p.partition, slots: (p) => p.slots[0], leader: (p) => p.leader ?? -1,
    term: (p) => p.term, keys: (p) => p.keys, lag: maxLag,
  }[partitionSort.key];
  const rows = view.partitions.filter(matches)
    .sort((a, b) => (value(a) - value(b)) * partitionSort.dir || a.partition - b.partition)
    .map((p) => {
      const flags = partitionFlags(p);
      const replicas = p.progress.length ? p.progress.map((r) => {
        const role = r.node === p.leader ? "★" : p.learners.includes(r.node) ? "learner " : "";
        const applied = r.applied_index === null ? "?" : r.applied_index;
        const lag = r.lag === null ? "" : `, lag ${r.lag}`;
        const snap = r.snapshot ? `, snapshot ${Math.round((100 * r.snapshot[0]) / r.snapshot[1])}%` : "";
        return `${role}${r.node} (${applied}${lag}${snap})`;
      }).join("  ") : p.replicas.join(", ");
      return el("tr", { "data-partition": p.partition, "data-flag": flags.join(" ") || null },
        el("td", {}, p.partition),
        el("td", {}, `${p.slots[0]}–${p.slots[1]}`),
        el("td", {}, p.leader === null ? "none" : `node ${p.leader}`),
        el("td", {}, p.term || "–"),
        el("td", {}, replicas),
        el("td", {}, count(p.keys)),
        el("td", {}, maxLag(p)),
        el("td", {}, flags.join(", ") || "ok"));
    });
  $("#partitions tbody").replaceChildren(...rows);
}

// ---- moves ----

function renderMoves(view) {
  if (!view.moves.length) {
    $("#moves").replaceChildren(el("li", {}, view.controller === null
      ? "No controller known: moves cannot be shown."
      : "No moves under way."));
    return;
  }
  // Moves under way, each with its progress; those waiting for the
  // throttle in one line.
  const active = view.moves.filter((m) => m.phase !== "waiting");
  const waiting = view.moves.filter((m) => m.phase === "waiting");
  const items = active.map((m) => {
    const done = m.snapshot_bytes_total ? m.snapshot_bytes_acked / m.snapshot_bytes_total : null;
    const eta = m.eta_seconds === null ? "" : `, about ${Math.ceil(m.eta_seconds)} s left`;
    const behind = done === null && m.entries_behind ? `, ${count(m.entries_behind)} entries behind` : "";
    return el("li", { "data-partition": m.partition },
      `partition ${m.partition}: ${m.kind} node ${m.from ?? "–"} → node ${m.to ?? "–"} (${m.reason}), ${m.phase}${behind}${eta} `,
      done === null ? null : el("progress", { max: 1, value: done.toFixed(3), "aria-label": `partition ${m.partition} snapshot` }),
      done === null ? null : ` ${bytes(m.snapshot_bytes_acked)} of ${bytes(m.snapshot_bytes_total)}`);
  });
  if (waiting.length) {
    const shown = waiting.slice(0, 16).map((m) => m.partition).join(", ");
    items.push(el("li", { class: "waiting" },
      `${waiting.length} more waiting their turn (the controller paces moves): partitions ${shown}${waiting.length > 16 ? ", …" : ""}`));
  }
  $("#moves").replaceChildren(...items);
}

// ---- events ----

function renderEvents(view) {
  const items = view.events.slice().reverse().map((e) =>
    el("li", { "data-kind": e.kind }, el("time", {}, new Date(e.at_unix_ms).toLocaleTimeString()), e.text));
  $("#events").replaceChildren(...(items.length ? items : [el("li", {}, "Nothing yet: elections, node changes and moves appear here.")]));
}

// ---- key tools ----

function keyPath(key) { return "/v1/kv/" + encodeURIComponent(key); }

async function answer(response) {
  const text = await response.text();
  try { return `${response.status}\n${JSON.stringify(JSON.parse(text), null, 2)}`; } catch { return `${response.status}\n${text}`; }
}

async function keyAction(action) {
  const key = $("#key").value;
  const out = $("#key-result");
  out.textContent = "…";
  try {
    let r;
    if (action === "locate") r = await fetch("/v1/cluster/locate/" + encodeURIComponent(key), { headers: authHeaders({}) });
    else if (action === "get") r = await fetch(keyPath(key), { headers: authHeaders({ Accept: "application/json" }) });
    else if (action === "put") r = await fetch(keyPath(key), { method: "PUT", body: $("#value").value, headers: authHeaders({ Accept: "application/json" }) });
    else r = await fetch(keyPath(key), { method: "DELETE", headers: authHeaders({ Accept: "application/json" }) });
    out.textContent = await answer(r);
  } catch (e) {
    out.textContent = `request failed: ${e}`;
  }
}

let browseCursor = null;
async function browse(more) {
  const list = $("#browse");
  const params = new URLSearchParams({ prefix: $("#prefix").value, limit: "50", keys_only: "true" });
  if (more && browseCursor) params.set("cursor", browseCursor);
  if (!more) list.replaceChildren();
  const r = await fetch("/v1/kv?" + params, { headers: authHeaders({}) });
  if (!r.ok) { list.append(el("li", {}, await answer(r))); return; }
  const page = await r.json();
  for (const kv of page.kvs) {
    const item = el("li", {}, el("a", { href: "#keys-section" }, kv.key), ` (version ${kv.version})`);
    item.querySelector("a").addEventListener("click", () => { $("#key").value = kv.key; keyAction("get"); });
    list.append(item);
  }
  if (!page.kvs.length && !more) list.append(el("li", {}, "no keys"));
  browseCursor = page.more ? page.cursor : null;
  $("#browse-more").hidden = !page.more;
}

$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  keyAction(e.submitter ? e.submitter.value : "get");
});
$("#browse-form").addEventListener("submit", (e) => { e.preventDefault(); browse(false); });
$("#browse-more").addEventListener("click", () => browse(true));
$("#partition-filter").addEventListener("input", () => latest && renderPartitions(latest));
$("#latency-op").addEventListener("change", () => latest && renderTraffic(latest));
for (const th of document.querySelectorAll("#partitions th[data-sort]")) {
  th.addEventListener("click", () => {
    const key = th.dataset.sort;
    partitionSort = { key, dir: partitionSort.key === key ? -partitionSort.dir : 1 };
    for (const other of document.querySelectorAll("#partitions th[data-sort]")) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", partitionSort.dir > 0 ? "ascending" : "descending");
    if (latest) renderPartitions(latest);
  });
}

connect();
