// The venue view's page: the board ("/") and a venue ("/venues/{id}"),
// from the JSON API, kept live by the Server-Sent Events stream (the
// browser's EventSource reconnects by itself and resumes with
// Last-Event-ID). Text is set with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
const fmt = (n) => Number(n).toLocaleString("en");

function tick() {
  $("clock").textContent = new Date().toLocaleTimeString("en-GB");
}
setInterval(tick, 1000);
tick();

function connect(url, handlers) {
  const es = new EventSource(url);
  es.onopen = () => { $("dot").className = "dot live"; $("status").textContent = "live"; };
  es.onerror = () => {
    $("dot").className = "dot down";
    $("status").textContent = "reconnecting";
    // A refusal (the view still catching up, too many streams) closes the
    // EventSource for good: open a new one (it starts with a snapshot).
    if (es.readyState === EventSource.CLOSED) setTimeout(() => connect(url, handlers), 3000);
  };
  for (const [name, fn] of Object.entries(handlers)) {
    es.addEventListener(name, (e) => fn(JSON.parse(e.data)));
  }
  es.addEventListener("error", (e) => {
    if (e.data) $("status").textContent = JSON.parse(e.data).error;
  });
  return es;
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

// A venue or zone tile: name, count of capacity, bar, chips.
function tile(key, href) {
  const t = el(href ? "a" : "div", "tile");
  if (href) t.href = href;
  t.dataset.key = key;
  t.append(el("h2"), el("div", "count"), el("div", "bar"), el("div", "chips"));
  t.querySelector(".bar").append(el("div"));
  return t;
}

const RANK = { ok: 0, near: 1, over: 2 };

// `level` colours the bar (the venue or zone itself); the tile's border
// takes the worst of it and its chips (a venue with a zone over capacity
// stands out on the board).
function fill(t, name, devices, capacity, percent, level, chips) {
  const worst = chips.reduce((w, [cls]) => (RANK[cls] > RANK[w] ? cls : w), level);
  t.className = "tile " + worst;
  t.querySelector(".bar").className = "bar " + level;
  t.querySelector("h2").textContent = name;
  const count = t.querySelector(".count");
  count.replaceChildren(document.createTextNode(fmt(devices) + " "), el("small", "", "of " + fmt(capacity)));
  t.querySelector(".bar > div").style.width = Math.min(100, percent) + "%";
  const c = t.querySelector(".chips");
  c.replaceChildren();
  for (const [cls, text] of chips) c.append(el("span", "chip " + cls, text));
  if (!chips.length) c.textContent = percent + "% of capacity";
}

// ---- the board ----------------------------------------------------------

const board = { venues: new Map(), grid: null };

function boardTile(v) {
  let t = board.grid.querySelector(`[data-key="${CSS.escape(v.id)}"]`);
  if (!t) {
    t = tile(v.id, "/venues/" + encodeURIComponent(v.id));
    board.grid.append(t);
  }
  const alerts = v.alerts_firing ? [["over", v.alerts_firing === 1 ? "1 alert" : v.alerts_firing + " alerts"]] : [];
  const chips = alerts.concat(v.zones_over.map((z) => ["over", z]), v.zones_near.map((z) => ["near", z]));
  fill(t, v.name || v.id, v.devices, v.capacity, v.percent, v.level, chips);
}

function boardSummary() {
  let devices = 0, over = 0;
  for (const v of board.venues.values()) {
    devices += v.devices;
    if (v.level === "over" || v.zones_over.length) over += 1;
  }
  $("summary").textContent = `${fmt(board.venues.size)} venues · ${fmt(devices)} devices · ${over} over capacity`;
}

async function resort() {
  const list = await getJSON("/api/venues?sort=pressure");
  for (const v of list.venues) {
    const t = board.grid.querySelector(`[data-key="${CSS.escape(v.id)}"]`);
    if (t) board.grid.append(t);
  }
}

async function showBoard() {
  $("title").textContent = "Venues · live occupancy";
  board.grid = el("div", "grid");
  $("main").replaceChildren(board.grid);
  const list = await getJSON("/api/venues?sort=pressure");
  for (const v of list.venues) { board.venues.set(v.id, v); boardTile(v); }
  if (!list.venues.length) $("main").append(el("div", "empty", "No venue has reported yet."));
  boardSummary();
  connect("/api/venues/events", {
    snapshot: (s) => { for (const o of s.venues) { board.venues.set(o.venue.id, o.venue); boardTile(o.venue); } boardSummary(); },
    occupancy: (o) => { board.venues.set(o.venue.id, o.venue); boardTile(o.venue); boardSummary(); },
  });
  // Numbers change in place; the order follows pressure once a minute, so
  // tiles do not jump under the reader's eyes.
  setInterval(() => resort().catch(() => {}), 60000);
}

// ---- one venue ------------------------------------------------------------

const venue = { id: null, zones: null, trend: [], from: 0, zoneTrends: new Map() };

function zoneTile(z) {
  let t = venue.zones.querySelector(`[data-key="${CSS.escape(z.zone)}"]`);
  if (!t) { t = tile(z.zone); venue.zones.append(t); }
  fill(t, z.zone, z.devices, z.capacity, z.percent, z.level, z.level === "ok" ? [] : [[z.level, z.percent + "%"]]);
}

// The venue's alerts: firing first (as the API orders them).
function alertList(alerts) {
  const ul = $("alerts");
  ul.replaceChildren();
  if (!alerts.length) { ul.append(el("li", "quiet", "No alert.")); return; }
  for (const a of alerts) {
    const li = el("li", a.status);
    li.append(el("span", "chip " + (a.status === "firing" ? "over" : "done"), a.status),
      el("strong", "", a.name + (a.zone ? " · " + a.zone : "")),
      el("span", "what", a.summary + (a.guest ? " (" + a.guest + ")" : "")),
      el("time", "", a.since.slice(11, 16) + (a.ended ? "–" + a.ended.slice(11, 16) : "")));
    ul.append(li);
  }
}

// The VIPs present: the newest arrival first (as the API orders them);
// names only where the view is configured to show them.
function vipList(vips) {
  const ul = $("vips");
  ul.replaceChildren();
  if (!vips.length) { ul.append(el("li", "quiet", "No VIP present.")); return; }
  for (const v of vips) {
    const li = el("li", "vip");
    li.append(el("span", "chip vip", "VIP"), el("strong", "", v.guest),
      el("span", "what", v.zone || ""), el("time", "", "since " + v.since.slice(11, 16)));
    ul.append(li);
  }
}

const dwell = (s) => s == null ? "–" : s < 3600 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h";

// Today's footfall by local hour against the same weekday last week, and
// the day's arrivals and median dwell, from the analytics store.
function dayChart(h) {
  const box = $("history");
  if (!h) { box.replaceChildren(el("div", "quiet", "No history store configured.")); return; }
  if (h.error) { box.replaceChildren(el("div", "quiet", h.error)); return; }
  const t = h.today, l = h.last_week;
  const line = el("div", "peak");
  line.textContent = `${t.date} (${h.time_zone}): ${fmt(t.arrivals)} arrivals (last week ${fmt(l.arrivals)}) · median dwell ${dwell(t.median_dwell_seconds)} (last week ${dwell(l.median_dwell_seconds)})`;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.id = "footfall";
  svg.setAttribute("viewBox", "0 0 1000 200");
  svg.setAttribute("preserveAspectRatio", "none");
  const w = 1000, h2 = 200, pad = 24, slot = (w - 2 * pad) / 24;
  const max = Math.max(1, ...t.footfall.map((n) => n || 0), ...l.footfall);
  const bar = (i, n, cls, inset) => {
    const r = document.createElementNS(ns, "rect");
    const height = (n * (h2 - 2 * pad)) / max;
    for (const [k, v] of [["x", pad + i * slot + inset], ["y", h2 - pad - height], ["width", slot - 2 * inset], ["height", height]]) r.setAttribute(k, v);
    r.setAttribute("class", cls);
    r.dataset.hour = i;
    r.dataset.count = n;
    return r;
  };
  for (let i = 0; i < 24; i++) {
    svg.append(bar(i, l.footfall[i], "last", 2));
    if (t.footfall[i] != null) svg.append(bar(i, t.footfall[i], "today", 8));
  }
  const legend = el("div", "legend");
  legend.append(el("span", "today", "today"), el("span", "last", "same day last week (" + l.date + ")"), el("span", "", "00–23 h local"));
  box.replaceChildren(line, svg, legend);
}

function header(v) {
  $("title").textContent = v.name || v.id;
  $("summary").textContent = `${fmt(v.devices)} of ${fmt(v.capacity)} devices · ${v.percent}%` + (v.as_of ? ` · as of ${v.as_of.slice(11, 16)} UTC` : "");
}

// The last hour: the venue's devices a minute, as an SVG line.
function chart() {
  const svg = $("chart");
  const points = venue.trend;
  const w = 1000, h = 200, pad = 24;
  const max = Math.max(1, ...points);
  const x = (i) => pad + (i * (w - 2 * pad)) / Math.max(1, points.length - 1);
  const y = (n) => h - pad - (n * (h - 2 * pad)) / max;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const axis = document.createElementNS(ns, "line");
  for (const [k, v] of [["x1", pad], ["y1", h - pad], ["x2", w - pad], ["y2", h - pad], ["stroke", "#2c3640"]]) axis.setAttribute(k, v);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map((n, i) => `${x(i).toFixed(1)},${y(n).toFixed(1)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#4aa3ff");
  line.setAttribute("stroke-width", "4");
  $("peak").textContent = `peak ${fmt(max)} · now ${fmt(points[points.length - 1] || 0)}`;
  svg.append(axis, line);
}

async function showVenue(id) {
  venue.id = id;
  const d = await getJSON("/api/venues/" + encodeURIComponent(id));
  header(d.venue);
  venue.zones = el("div", "grid");
  const trend = el("section");
  trend.append(el("h3", "", "Devices present, last hour (one point a minute)"));
  const box = el("div", "chart");
  const peak = el("div", "peak");
  peak.id = "peak";
  box.append(peak);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.id = "chart";
  svg.setAttribute("viewBox", "0 0 1000 200");
  svg.setAttribute("preserveAspectRatio", "none");
  box.append(svg);
  trend.append(box);
  const zones = el("section");
  zones.append(el("h3", "", "Zones"), venue.zones);
  const alerts = el("section");
  const ul = el("ul", "alerts");
  ul.id = "alerts";
  alerts.append(el("h3", "", "Alerts"), ul);
  const vips = el("section");
  const vl = el("ul", "alerts");
  vl.id = "vips";
  vips.append(el("h3", "", "VIPs present"), vl);
  const day = el("section");
  const hbox = el("div", "chart");
  hbox.id = "history";
  day.append(el("h3", "", "Footfall today by hour, against the same day last week"), hbox);
  $("main").replaceChildren(zones, alerts, vips, trend, day);
  alertList(d.alerts || []);
  vipList(d.vips || []);
  dayChart(d.history);
  // History moves slowly (the store is asked at most every
  // history.refresh): once a minute is enough.
  setInterval(() => getJSON("/api/venues/" + encodeURIComponent(id) + "?minutes=1").then((x) => dayChart(x.history)).catch(() => {}), 60000);
  for (const z of d.zones) zoneTile(z);
  venue.trend = d.trend.devices.slice();
  venue.from = Date.parse(d.trend.from);
  chart();
  const update = (o) => {
    header(o.venue);
    for (const z of o.zones) zoneTile(z);
    alertList(o.alerts || []);
    vipList(o.vips || []);
    // The newest point is now; a new minute shifts the hour along.
    const minute = o.venue.as_of ? Date.parse(o.venue.as_of) : Date.now();
    const at = Math.floor((minute - venue.from) / 60000);
    if (at >= venue.trend.length) {
      const shift = at - venue.trend.length + 1;
      const last = venue.trend[venue.trend.length - 1];
      for (let i = 0; i < shift; i++) venue.trend.push(last);
      venue.trend.splice(0, shift);
      venue.from += shift * 60000;
    }
    venue.trend[Math.max(0, Math.min(venue.trend.length - 1, at))] = o.venue.devices;
    chart();
  };
  connect("/api/venues/" + encodeURIComponent(id) + "/events", {
    snapshot: (s) => { for (const o of s.venues) update(o); },
    occupancy: update,
  });
}

const m = location.pathname.match(/^\/venues\/([^/]+)$/);
(m ? showVenue(decodeURIComponent(m[1])) : showBoard()).catch((e) => {
  $("dot").className = "dot down";
  $("status").textContent = String(e.message || e);
});
