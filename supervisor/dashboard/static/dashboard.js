// slotd dashboard: the daemon's state and one session's transcript, pushed as
// Server-Sent Events; actions are POSTs carrying the page's CSRF token.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const LIVE = ["waiting_checkpoint", "running", "paused"];
const ENDED = ["completed", "failed", "killed", "lost", "cancelled"];
let current = null; // { id, source, decoders, ansi, tty: { terminal, sendSize, dispose } }
let known = new Map(); // the sessions of the last state, by id

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function age(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return Math.round(seconds) + "s";
  if (seconds < 3600) return Math.round(seconds / 60) + "m";
  if (seconds < 86400) return Math.round(seconds / 3600) + "h";
  return Math.round(seconds / 86400) + "d";
}

function labels(session) {
  return Object.entries(session.labels || {}).map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join(" ");
}

function row(session, third, when) {
  const tr = el("tr", { "data-session": session.id },
    el("td", {}, session.id.slice(0, 8)),
    el("td", { class: "status status-" + session.status }, session.status),
    el("td", {}, third === null || third === undefined ? "" : String(third)),
    el("td", { class: "command", title: session.argv.join(" ") }, session.argv.join(" ")),
    el("td", {}, labels(session)),
    el("td", { class: "age", "data-when": when || "" }, age(when)));
  if (current && current.id === session.id) tr.classList.add("selected");
  tr.addEventListener("click", () => openSession(session.id));
  return tr;
}

// A table's rows are made anew only when what they show has changed: states arrive
// four times a second, and rows replaced under the pointer would swallow the click a
// person is making (the press on one row, the release on its successor). Ages move on
// in place (refreshAges).
function fill(id, sessions, third, when) {
  const tbody = document.querySelector("#" + id + " tbody");
  const key = JSON.stringify(sessions.map((s) => [s.id, s.status, third(s), s.argv, s.labels, when(s)]));
  if (tbody.dataset.key === key) return;
  tbody.dataset.key = key;
  tbody.replaceChildren(...sessions.map((s) => row(s, third(s), when(s))));
}

function refreshAges() {
  for (const cell of document.querySelectorAll("td.age")) cell.textContent = age(cell.dataset.when);
}
setInterval(refreshAges, 1000);

// A banner across the page while the daemon (or the dashboard) does not answer; the
// streams go on trying, and the page is whole again when it answers.
function showBanner(text) {
  const banner = document.getElementById("banner");
  banner.textContent = text || "";
  banner.hidden = !text;
}

function showState(state) {
  const daemon = document.getElementById("daemon");
  if (state.daemon !== "up") {
    daemon.textContent = "daemon unreachable";
    daemon.className = "daemon daemon-down";
    showBanner("The daemon is not answering: " + state.error + ". This page reconnects when it is back.");
    return;
  }
  showBanner("");
  daemon.textContent = "daemon up";
  daemon.className = "daemon";
  const sessions = state.ps.sessions;
  known = new Map(sessions.map((s) => [s.id, s]));
  fill("live", sessions.filter((s) => LIVE.includes(s.status)), (s) => s.slot, (s) => s.started_at);
  fill("queued", sessions.filter((s) => s.status === "queued"), (s) => s.priority, (s) => s.queued_at);
  const ended = state.ended || sessions.filter((s) => !LIVE.includes(s.status) && s.status !== "queued");
  fill("ended", ended, (s) => s.exit_code, (s) => s.ended_at);
  const info = state.info;
  const parts = [
    info.busy + "/" + info.slots + " slots busy",
    info.queued + " queued",
    "ingest lag " + info.ingest_lag,
    "database " + (info.database_bytes / 1048576).toFixed(1) + " MiB",
  ];
  if (info.draining) parts.push("draining");
  document.getElementById("info").textContent = parts.join(" · ");
  if (current) showStatus(current.id);
}

function showStatus(id) {
  const session = known.get(id);
  const status = document.getElementById("view-status");
  status.textContent = session ? session.status : "";
  status.className = session ? "status status-" + session.status : "status";
}

// ANSI SGR colours as spans; other escape sequences are dropped.
function appendAnsi(output, text, stream, ansi) {
  const parts = text.split(/\x1b\[([0-9;]*)([A-Za-z])/);
  for (let i = 0; i < parts.length; i += 3) {
    if (parts[i]) {
      const classes = ["stream-" + stream, ...ansi.classes];
      output.append(el("span", { class: classes.join(" ") }, parts[i].replace(/\x1b[^[]?/g, "")));
    }
    if (i + 2 < parts.length && parts[i + 2] === "m") {
      for (const code of (parts[i + 1] || "0").split(";").map(Number)) {
        if (code === 0) ansi.classes = [];
        else if (code === 1) ansi.classes.push("ansi-bold");
        else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) {
          ansi.classes = ansi.classes.filter((c) => c === "ansi-bold").concat("ansi-" + code);
        } else if (code === 39) ansi.classes = ansi.classes.filter((c) => c === "ansi-bold");
      }
    }
  }
}

function rowBytes(row) {
  if (row.encoding === "base64") return Uint8Array.from(atob(row.data), (c) => c.charCodeAt(0));
  return new TextEncoder().encode(row.data);
}

// A tty session's output is drawn by a terminal (xterm.js), sized to its box, whose
// keys are sent as typed and whose size is the session's (as `slotctl attach` does).
function openTerminal(id) {
  const box = document.getElementById("terminal");
  box.replaceChildren();
  box.hidden = false;
  const terminal = new Terminal({ convertEol: false, scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  terminal.loadAddon(fit);
  terminal.open(box);
  // One send at a time, keys typed meanwhile gathered into the next: POSTs in flight
  // together may arrive in any order, and keys must reach the session as typed.
  let pending = "";
  let sending = false;
  terminal.onData(async (keys) => {
    pending += keys;
    if (sending) return;
    sending = true;
    while (pending) {
      const text = pending;
      pending = "";
      await post("send", { text, newline: false }, false, id);
    }
    sending = false;
  });
  // The session's terminal takes the widget's size, the last one if it changes while
  // one is on its way. An ended session has no terminal to size.
  let sized = null;
  let sending_size = null; // the promise of the sizes being sent, while they are
  async function sendSizes() {
    while (
      (!sized || sized.cols !== terminal.cols || sized.rows !== terminal.rows) &&
      !ENDED.includes(known.get(id)?.status)
    ) {
      const size = { cols: terminal.cols, rows: terminal.rows };
      if (!(await post("resize", size, true, id))) break;
      sized = size;
    }
  }
  function sendSize() {
    sending_size ||= sendSizes().finally(() => { sending_size = null; });
    return sending_size;
  }
  terminal.onResize(sendSize);
  const refit = () => fit.fit();
  window.addEventListener("resize", refit);
  fit.fit();
  return { terminal, sendSize, dispose: () => { window.removeEventListener("resize", refit); terminal.dispose(); } };
}

// The rows of a session's transcript from since_seq on, to draw as they come.
function follow(mine, since_seq) {
  // EventSource reconnects by itself, sending the last row's seq as Last-Event-ID.
  const source = new EventSource(
    "/api/sessions/" + encodeURIComponent(mine.id) + "/follow" + (since_seq ? "?since_seq=" + since_seq : ""));
  mine.source = source;
  const output = document.getElementById("output");
  source.addEventListener("row", (message) => {
    const row = JSON.parse(message.data);
    if (mine.tty) {
      if (row.stream === "tty") mine.tty.terminal.write(rowBytes(row));
      return;
    }
    const decoder = (mine.decoders[row.stream] ||= new TextDecoder("utf-8"));
    let text = decoder.decode(rowBytes(row), { stream: true });
    if (row.stream === "system") text = "[" + text.replace(/\n$/, "") + "]\n";
    const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
    appendAnsi(output, text, row.stream, mine.ansi);
    if (atBottom) output.scrollTop = output.scrollHeight;
  });
  source.addEventListener("end", () => source.close());
  source.addEventListener("refused", (message) => {
    output.append(el("span", { class: "stream-system" }, "[" + JSON.parse(message.data).message + "]\n"));
    source.close();
  });
}

// A tty session is sized first (a full-screen program redraws for its new size), then
// drawn from its current screen, then followed from the row that screen accounts for,
// so a page opened late shows what a terminal on the session would.
async function drawTerminal(mine) {
  await mine.tty.sendSize();
  const response = await fetch("/api/sessions/" + encodeURIComponent(mine.id) + "/screen");
  if (current !== mine) return;
  const reply = await response.json();
  if (!response.ok) {
    mine.tty.terminal.write("[" + reply.error.message + "]\r\n");
    return;
  }
  mine.tty.terminal.write(rowBytes(reply.result));
  follow(mine, reply.result.through);
}

function openSession(id) {
  if (current) {
    if (current.source) current.source.close();
    if (current.tty) current.tty.dispose();
  }
  const output = document.getElementById("output");
  output.replaceChildren();
  const tty = Boolean(known.get(id)?.tty);
  output.hidden = tty;
  document.getElementById("terminal").hidden = !tty;
  document.getElementById("view").hidden = false;
  document.getElementById("view-title").textContent = id.slice(0, 8);
  showStatus(id);
  document.getElementById("action-result").textContent = "";
  for (const tr of document.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  for (const tr of document.querySelectorAll('tr[data-session="' + id + '"]')) tr.classList.add("selected");
  current = { id, source: null, decoders: {}, ansi: { classes: [] }, tty: null };
  if (tty) {
    current.tty = openTerminal(id);
    drawTerminal(current);
  } else {
    follow(current, 0);
  }
}

// A POST of one action on a session (the one in view unless named: a terminal's keys
// and sizes go to its own session, even once another is in view); quiet ones (the
// terminal's size) are not reported unless refused.
async function post(action, body, quiet, id) {
  const result = document.getElementById("action-result");
  const response = await fetch("/api/sessions/" + encodeURIComponent(id || current.id) + "/" + action, {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": csrf },
    body: JSON.stringify(body || {}),
  });
  const reply = await response.json();
  if (!(quiet && response.ok)) result.textContent = response.ok ? action + ": done" : action + ": " + reply.error.message;
  if (response.ok && action === "restart") openSession(reply.result.id); // the new session
  return response.ok;
}

for (const button of document.querySelectorAll("#actions button")) {
  button.addEventListener("click", () => post(button.dataset.action));
}

document.getElementById("input-form").addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  const input = document.getElementById("input");
  if (await post("send", { text: input.value })) input.value = "";
});

// The state stream; reopened with the ended sessions' filters when they change.
let stateSource = null;
function openState() {
  if (stateSource) stateSource.close();
  const query = new URLSearchParams();
  const status = document.getElementById("filter-status").value;
  const label = document.getElementById("filter-label").value.trim();
  if (status) query.set("status", status);
  if (label.includes("=")) query.set("label", label);
  stateSource = new EventSource("/api/state" + (query.size ? "?" + query : ""));
  stateSource.addEventListener("state", (message) => showState(JSON.parse(message.data)));
  // EventSource tries again by itself; the next state takes the banner down.
  stateSource.addEventListener("error", () =>
    showBanner("Lost the dashboard; trying again (if it was restarted with --new-token, open the new URL it printed)."));
}
document.getElementById("filter-status").addEventListener("change", openState);
document.getElementById("filter-label").addEventListener("change", openState);
document.getElementById("filters").addEventListener("submit", (submitted) => submitted.preventDefault());
openState();
