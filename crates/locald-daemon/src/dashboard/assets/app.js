// The locald dashboard: projects from the `/events` stream, logs from `/logs`, actions POSTed
// to `/action`. Everything is built with DOM calls and textContent, never HTML from data.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, text) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};

const COLUMNS = ["service", "state", "pid", "port", "url", "restarts", "uptime", "cpu", "memory", ""];
const rows = new Map(); // "dir\0service" -> {tr, cells}
const tables = new Map(); // dir -> {section, tbody}
let latest = { projects: [] };

function duration(secs) {
  if (secs == null) return "-";
  if (secs < 60) return secs + "s";
  if (secs < 3600) return Math.floor(secs / 60) + "m" + (secs % 60) + "s";
  if (secs < 86400) return Math.floor(secs / 3600) + "h" + Math.floor((secs % 3600) / 60) + "m";
  return Math.floor(secs / 86400) + "d" + Math.floor((secs % 86400) / 3600) + "h";
}

function bytes(n) {
  if (n == null) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function projectTable(project) {
  let entry = tables.get(project.dir);
  if (entry) return entry;
  const section = el("div", { class: "project", "data-dir": project.dir });
  const title = el("h2");
  title.append(el("span", {}, project.name), el("small", {}, project.dir));
  const down = el("button", { "data-action": "down" }, "down");
  down.addEventListener("click", () => act({ dir: project.dir, action: "down" }));
  title.append(down);
  const table = el("table");
  const head = el("tr");
  for (const c of COLUMNS) head.append(el("th", {}, c));
  const thead = el("thead");
  thead.append(head);
  const tbody = el("tbody");
  table.append(thead, tbody);
  section.append(title, table);
  $("projects").append(section);
  entry = { section, tbody };
  tables.set(project.dir, entry);
  return entry;
}

function serviceRow(project, service, tbody) {
  const key = project.dir + "\0" + service.name;
  let row = rows.get(key);
  if (row) return row;
  const tr = el("tr", { "data-service": service.name, "data-project": project.name });
  const cells = {};
  for (const c of COLUMNS.slice(0, -1)) {
    cells[c] = el("td", { class: ["pid", "port", "restarts", "uptime", "cpu", "memory"].includes(c) ? "num " + c : c });
    tr.append(cells[c]);
  }
  const actions = el("td", { class: "actions" });
  // Symbols keep fifty rows beside the log view; the name is in the tooltip and for readers.
  const symbols = { start: "\u25B6", stop: "\u25A0", restart: "\u21BB" };
  for (const action of ["start", "stop", "restart"]) {
    const label = action + " " + service.name;
    const b = el("button", { "data-action": action, title: label, "aria-label": label }, symbols[action]);
    b.addEventListener("click", () => act({ dir: project.dir, service: service.name, action }));
    actions.append(b);
  }
  const logs = el("button", { "data-action": "logs" }, "logs");
  logs.addEventListener("click", () => showLogs(project.dir, service.name));
  actions.append(logs);
  tr.append(actions);
  const last = el("tr", { class: "lastlines", hidden: "" });
  const lastCell = el("td", { class: "last", colspan: COLUMNS.length });
  last.append(lastCell);
  tbody.append(tr, last);
  row = { tr, cells, last, lastCell };
  rows.set(key, row);
  return row;
}

// An https:// name as a link (shown without the scheme, which every one has), another
// protocol's host:port as text, "-" for a service that serves nothing.
function showAddress(cell, url) {
  const shown = url ?? "-";
  if (cell.dataset.shown === shown) return;
  cell.dataset.shown = shown;
  if (url && url.startsWith("https://")) {
    const link = el("a", { href: url + "/", target: "_blank", rel: "noopener", title: url });
    // A long name wraps after a dot or before the port rather than inside a label.
    for (const part of url.slice(8).split(/(?<=\.)|(?=:)/)) link.append(part, el("wbr"));
    cell.replaceChildren(link);
  } else {
    cell.textContent = shown;
  }
}

function render(snapshot) {
  latest = snapshot;
  const live = new Set();
  const liveDirs = new Set();
  for (const project of snapshot.projects) {
    liveDirs.add(project.dir);
    const { tbody } = projectTable(project);
    for (const s of project.services) {
      live.add(project.dir + "\0" + s.name);
      const row = serviceRow(project, s, tbody);
      const c = row.cells;
      c.service.textContent = s.name;
      c.state.textContent = s.label + (s.exit_code != null && s.label !== "completed" ? " (" + s.exit_code + ")" : "");
      c.state.className = "state s-" + s.label.replace(/ /g, "-");
      c.state.title = s.detail || "";
      row.tr.dataset.state = s.label;
      c.pid.textContent = s.pid ?? "-";
      c.port.textContent = s.port ?? "-";
      showAddress(c.url, s.url);
      c.restarts.textContent = s.restarts;
      c.uptime.textContent = duration(s.uptime_secs);
      c.cpu.textContent = s.cpu_percent == null ? "-" : s.cpu_percent.toFixed(1) + "%";
      c.memory.textContent = bytes(s.memory_bytes);
      row.lastCell.textContent = s.last_lines.join("\n");
      row.last.hidden = s.last_lines.length === 0;
    }
  }
  for (const [key, row] of rows) {
    if (!live.has(key)) { row.tr.remove(); row.last.remove(); rows.delete(key); }
  }
  for (const [dir, t] of tables) {
    if (!liveDirs.has(dir)) { t.section.remove(); tables.delete(dir); }
  }
  const empty = $("projects").querySelector(".empty");
  if (snapshot.projects.length === 0 && !empty) {
    $("projects").append(el("p", { class: "empty" }, "No project is running. Start one with locald up."));
  } else if (snapshot.projects.length && empty) {
    empty.remove();
  }
  updateSources();
}

function updateSources() {
  const select = $("logsource");
  const wanted = [];
  for (const p of latest.projects) {
    wanted.push([JSON.stringify([p.dir, ""]), p.name + ": all services"]);
    for (const s of p.services) wanted.push([JSON.stringify([p.dir, s.name]), p.name + " / " + s.name]);
  }
  const have = [...select.options].map((o) => o.value).join("\n");
  if (have === wanted.map((w) => w[0]).join("\n")) return;
  const current = select.value;
  select.replaceChildren(...wanted.map(([v, t]) => el("option", { value: v }, t)));
  if (wanted.some((w) => w[0] === current)) select.value = current;
  else if (wanted.length) openLogs(JSON.parse(select.value));
}

let logStream = null;
const MAX_LINES = 5000;

function showLogs(dir, service) {
  const value = JSON.stringify([dir, service]);
  $("logsource").value = value;
  openLogs([dir, service]);
}

function openLogs([dir, service]) {
  if (logStream) logStream.close();
  $("log").replaceChildren();
  const query = new URLSearchParams({ dir, service });
  logStream = new EventSource("/logs?" + query);
  logStream.addEventListener("log", (e) => addLine(JSON.parse(e.data)));
}

function matches(line) {
  const f = $("filter").value.toLowerCase();
  return !f || line.toLowerCase().includes(f);
}

function addLine(l) {
  const log = $("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  const time = new Date(l.micros / 1000).toLocaleTimeString();
  const node = el("div", { class: "line " + l.stream });
  node.append(el("span", { class: "svc" }, time + " " + l.service + " | "), document.createTextNode(l.line));
  node.hidden = !matches(node.textContent);
  log.append(node);
  while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
  if ($("follow").checked && atEnd) log.scrollTop = log.scrollHeight;
}

async function act(body) {
  const out = $("result");
  out.className = "";
  out.textContent = body.action + " " + (body.service || "") + "…";
  try {
    const response = await fetch("/action", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({ ok: false, message: response.statusText }));
    out.textContent = answer.message;
    out.className = answer.ok ? "ok" : "bad";
  } catch (e) {
    out.textContent = "failed: " + e;
    out.className = "bad";
  }
}

function connect() {
  const events = new EventSource("/events");
  events.addEventListener("state", (e) => render(JSON.parse(e.data)));
  events.onopen = () => { $("conn").textContent = "live"; };
  events.onerror = () => { $("conn").textContent = "reconnecting…"; };
}

document.addEventListener("DOMContentLoaded", () => {
  $("logsource").addEventListener("change", (e) => openLogs(JSON.parse(e.target.value)));
  $("filter").addEventListener("input", () => {
    for (const node of $("log").children) node.hidden = !matches(node.textContent);
  });
  connect();
});
