// Fugato admin UI: a dependency-free single-page app. It talks only to this server's admin endpoints
// (relative URLs under the page's own path) with the session token it got at login.
"use strict";

const TOKEN_KEY = "fugato-admin-token";
const NODES_INTERVAL_MS = 3000; // the Nodes view refreshes itself this often
const TAIL_KEEP = 200; // publications kept on screen by the live tail
const VIEWS = ["nodes", "channels", "publish", "presence", "history", "tail", "actions", "connections"];

const state = { token: sessionStorage.getItem(TOKEN_KEY) || "", insecure: false, stop: null, hasConnections: false,
  methods: [] };

// --- DOM helpers (text is always set as text, never parsed as HTML) -----------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value == null) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child != null) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

let fieldIds = 0;
function field(label, control, hint) {
  const id = control.id || `f${++fieldIds}`;
  control.id = id;
  const parts = [h("label", { for: id, text: label }), control];
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("small", { id: hintId, class: "hint", text: hint }));
  }
  return h("div", { class: "field" }, parts);
}

function table(caption, headers, rows) {
  return h("div", { class: "scroll", role: "region", "aria-label": caption, tabindex: "0" },
    h("table", {},
      h("caption", { text: caption }),
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, rows.length ? rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))
        : h("tr", {}, h("td", { colspan: String(headers.length), class: "empty", text: "Nothing to show" })))));
}

function status() {
  return h("p", { role: "status", class: "status", "aria-live": "polite" });
}

function show(el, text, ok) {
  el.textContent = text;
  el.className = `status ${ok ? "ok" : "error"}`;
}

function json(value) {
  return value === undefined ? "" : JSON.stringify(value);
}

function uptime(seconds) {
  const d = Math.floor(seconds / 86400), hrs = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  return d ? `${d}d ${hrs}h ${m}m` : hrs ? `${hrs}h ${m}m ${s}s` : m ? `${m}m ${s}s` : `${s}s`;
}

// --- talking to the server ---------------------------------------------------------------------------

function authHeaders() {
  return state.token ? { Authorization: `token ${state.token}` } : {};
}

class SessionEnded extends Error {}

// Runs one server API method through the admin endpoint; resolves to {result} or {error: {code, message}}.
async function call(method, params) {
  const response = await fetch("admin/api", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ method, params }),
  });
  if (response.status === 401) {
    logout("Your session ended: log in again.");
    throw new SessionEnded();
  }
  if (!response.ok) return { error: { code: response.status, message: response.statusText } };
  return response.json();
}

function errorText(error) {
  return `Error ${error.code}: ${error.message}`;
}

// --- login -------------------------------------------------------------------------------------------

function loginView(message) {
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
  const out = h("p", { role: "alert", class: "status error", id: "login-error", text: message || "" });
  const form = h("form", { class: "card narrow", "aria-labelledby": "login-title" },
    h("h2", { id: "login-title", tabindex: "-1", text: "Log in" }),
    field("Password", password),
    h("button", { type: "submit", text: "Log in" }),
    out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    out.textContent = "";
    const response = await fetch("admin/auth", {
      method: "POST", body: new URLSearchParams({ password: password.value }),
    });
    if (response.ok) {
      state.token = (await response.json()).token;
      sessionStorage.setItem(TOKEN_KEY, state.token);
      password.value = "";
      enter();
    } else if (response.status === 429) {
      const wait = response.headers.get("Retry-After") || "60";
      out.textContent = `Too many failed attempts: try again in ${wait} seconds.`;
    } else {
      out.textContent = "Wrong password.";
      password.select();
    }
  });
  return form;
}

function logout(message) {
  state.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  stopView();
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  render(loginView(message), "Log in");
  document.querySelector("#main input").focus();
}

// --- views -------------------------------------------------------------------------------------------

function nodesView() {
  const summary = h("p", { class: "summary" });
  const live = h("p", { class: "muted" });
  const holder = h("div");
  let timer = null, stopped = false;
  async function refresh() {
    try {
      const reply = await call("info", {});
      if (stopped) return;
      if (reply.error) {
        show(live, errorText(reply.error), false);
      } else {
        const nodes = reply.result.nodes.slice().sort((a, b) => a.name.localeCompare(b.name));
        const sum = (key) => nodes.reduce((n, node) => n + (node[key] || 0), 0);
        summary.textContent = `${nodes.length} node${nodes.length === 1 ? "" : "s"}, ${sum("num_clients")} clients, ` +
          `${sum("num_users")} users, ${sum("num_subs")} subscriptions`;
        holder.replaceChildren(table("Nodes of the cluster",
          ["Name", "Version", "Uptime", "Clients", "Users", "Subscriptions", "Channels"],
          nodes.map((n) => [n.name, n.version, uptime(n.uptime || 0), String(n.num_clients || 0),
            String(n.num_users || 0), String(n.num_subs || 0), String(n.num_channels || 0)])));
        live.textContent = `Live: updated ${new Date().toLocaleTimeString()}, every ${NODES_INTERVAL_MS / 1000} s`;
        live.className = "muted";
      }
    } catch (e) {
      if (e instanceof SessionEnded) return;
      live.textContent = "Server unreachable: retrying";
      live.className = "status error";
    }
    if (!stopped) timer = setTimeout(refresh, NODES_INTERVAL_MS);
  }
  refresh();
  return { el: [summary, holder, live], stop: () => { stopped = true; clearTimeout(timer); } };
}

function channelsView() {
  const search = h("input", { type: "search", name: "search", autocomplete: "off" });
  const holder = h("div");
  const out = status();
  let debounce = null;
  async function refresh() {
    const term = search.value.trim();
    const reply = await call("channels", term ? { pattern: `*${term}*` } : {});
    if (reply.error) return show(out, errorText(reply.error), false);
    const entries = Object.entries(reply.result.channels || {}).sort(([a], [b]) => a.localeCompare(b));
    out.textContent = `${entries.length} active channel${entries.length === 1 ? "" : "s"}`;
    out.className = "status";
    holder.replaceChildren(table("Active channels", ["Channel", "Subscribers", "Look into"],
      entries.map(([name, info]) => [name, String(info.num_clients), h("span", { class: "links" },
        h("a", { href: `#presence/${encodeURIComponent(name)}`, text: "Who's here" }),
        h("a", { href: `#history/${encodeURIComponent(name)}`, text: "Past messages" }),
        h("a", { href: `#tail/${encodeURIComponent(name)}`, text: "Watch" }))])));
  }
  search.addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(refresh, 250); });
  const form = h("form", { role: "search", onsubmit: (e) => { e.preventDefault(); refresh(); } },
    field("Search channels", search, "Part of a channel name; * and ? are wildcards."),
    h("button", { type: "submit", text: "Refresh" }));
  refresh();
  return { el: [form, out, holder], stop: () => clearTimeout(debounce) };
}

function channelList(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

function publishView(channel) {
  const ch = h("input", { name: "channel", required: true, autocomplete: "off", value: channel || "" });
  const data = h("textarea", { name: "data", rows: "6", required: true, spellcheck: "false", placeholder: '{"text": "hello"}' });
  const out = status();
  const form = h("form", { class: "card" },
    field("Channel", ch, "Several channels, separated by commas or spaces, are published to with broadcast."),
    field("Data", data, "The publication's payload, as JSON."),
    h("button", { type: "submit", text: "Publish" }), out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let payload;
    try {
      payload = JSON.parse(data.value);
    } catch (e) {
      return show(out, `Data is not valid JSON: ${e.message}`, false);
    }
    const channels = channelList(ch.value);
    if (channels.length === 1) {
      const reply = await call("publish", { channel: channels[0], data: payload });
      if (reply.error) return show(out, errorText(reply.error), false);
      const r = reply.result;
      return show(out, `Published to ${channels[0]}: offset ${r.offset || 0}, epoch ${r.epoch || "none"}`, true);
    }
    const reply = await call("broadcast", { channels, data: payload });
    if (reply.error) return show(out, errorText(reply.error), false);
    const lines = reply.result.responses.map((r, i) => r.error ? `${channels[i]}: ${errorText(r.error)}`
      : `${channels[i]}: offset ${r.result.offset || 0}, epoch ${r.result.epoch || "none"}`);
    show(out, `Broadcast to ${channels.length} channels. ${lines.join("; ")}`,
      reply.result.responses.every((r) => !r.error));
  });
  return { el: [form] };
}

// A form asking for a channel, whose submit runs `load(channel, out, holder)`.
function channelForm(channel, button, extra, load) {
  const ch = h("input", { name: "channel", required: true, autocomplete: "off", value: channel || "" });
  const out = status();
  const holder = h("div");
  const form = h("form", { class: "card" }, field("Channel", ch), extra, h("button", { type: "submit", text: button }));
  form.addEventListener("submit", (event) => { event.preventDefault(); load(ch.value.trim(), out, holder); });
  if (channel) setTimeout(() => form.requestSubmit(), 0);
  return [form, out, holder];
}

function presenceView(channel) {
  return { el: channelForm(channel, "Show presence", null, async (name, out, holder) => {
    const [reply, stats] = await Promise.all([call("presence", { channel: name }), call("presence_stats", { channel: name })]);
    if (reply.error) { holder.replaceChildren(); return show(out, errorText(reply.error), false); }
    const s = stats.result || {};
    show(out, `${name}: ${s.num_clients || 0} clients, ${s.num_users || 0} users`, true);
    holder.replaceChildren(table(`Presence in ${name}`, ["Client", "User", "Connection info", "Channel info"],
      Object.values(reply.result.presence || {}).map((p) => [p.client, p.user, json(p.conn_info), json(p.chan_info)])));
  }) };
}

function historyView(channel) {
  const limit = h("input", { type: "number", name: "limit", min: "-1", value: "20" });
  const reverse = h("input", { type: "checkbox", name: "reverse", checked: true });
  const extra = [field("Limit", limit, "-1: the whole stream."),
    h("div", { class: "check" }, reverse, h("label", { for: (reverse.id = "history-reverse"), text: "Newest first" }))];
  return { el: channelForm(channel, "Show history", extra, async (name, out, holder) => {
    const reply = await call("history", { channel: name, limit: Number(limit.value), reverse: reverse.checked });
    if (reply.error) { holder.replaceChildren(); return show(out, errorText(reply.error), false); }
    const r = reply.result;
    show(out, `${name}: stream at offset ${r.offset || 0}, epoch ${r.epoch || "none"}`, true);
    holder.replaceChildren(table(`History of ${name}`, ["Offset", "Data", "Publisher"],
      (r.publications || []).map((p) => [String(p.offset || ""), json(p.data), p.info ? p.info.user : ""])));
  }) };
}

function tailView(channel) {
  const ch = h("input", { name: "channel", required: true, autocomplete: "off", value: channel || "" });
  const button = h("button", { type: "submit", text: "Start" });
  const out = status();
  const log = h("ol", { class: "log", role: "log", "aria-label": "Publications", "aria-live": "polite", reversed: true });
  let abort = null;
  function stop(message) {
    if (abort) abort.abort();
    abort = null;
    button.textContent = "Start";
    if (message) show(out, message, false);
  }
  function add(event) {
    const p = event.publication;
    const text = p.b64data !== undefined ? `(binary, base64) ${p.b64data}` : json(p.data);
    log.prepend(h("li", {}, h("span", { class: "offset", text: p.offset ? `#${p.offset}` : "" }), " ",
      h("code", { text }), p.info ? h("span", { class: "muted", text: ` from ${p.info.user || "anonymous"}` }) : null));
    while (log.children.length > TAIL_KEEP) log.lastChild.remove();
  }
  async function start(name) {
    abort = new AbortController();
    button.textContent = "Stop";
    log.replaceChildren();
    show(out, `Connecting to ${name}…`, true);
    let response;
    try {
      response = await fetch(`admin/tail?channel=${encodeURIComponent(name)}`,
        { headers: authHeaders(), signal: abort.signal });
    } catch (e) {
      return stop(abort ? "Server unreachable." : "");
    }
    if (response.status === 401) return logout("Your session ended: log in again.");
    if (!response.ok) return stop(`Error ${response.status}: could not tail ${name}.`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const kind = (block.match(/^event: (.*)$/m) || [])[1] || "message";
          const data = (block.match(/^data: (.*)$/m) || [])[1];
          if (kind === "ready") show(out, `Listening to ${name}: new publications appear below.`, true);
          else if (kind === "overflow") return stop("Too many publications to show: the tail stopped.");
          else if (data) add(JSON.parse(data));
        }
      }
      stop("The server ended the tail.");
    } catch (e) {
      if (abort) stop("The tail was interrupted.");
    }
  }
  const form = h("form", { class: "card" }, field("Channel", ch), button, out);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (abort) { stop(); show(out, "Stopped.", true); } else start(ch.value.trim());
  });
  if (channel) setTimeout(() => form.requestSubmit(), 0);
  return { el: [form, log], stop: () => stop() };
}

// An action form: fields, a confirmation naming what will happen, then the API call.
function actionForm(title, fields, button, describe, method) {
  const out = status();
  const form = h("form", { class: "card" },
    h("fieldset", {}, h("legend", { text: title }), fields.map(([label, control, hint]) => field(label, control, hint)),
      h("button", { type: "submit", class: "danger", text: button }), out));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(fields.map(([, control]) => [control.name, control.value.trim()]));
    if (!(await confirmAction(describe(values)))) return show(out, "Cancelled.", true);
    const params = Object.fromEntries(Object.entries(values).filter(([, v]) => v !== ""));
    const reply = await call(method, params);
    show(out, reply.error ? errorText(reply.error) : `Done: ${describe(values)}`, !reply.error);
  });
  return form;
}

function input(name, required) {
  return h("input", { name, required: !!required, autocomplete: "off" });
}

function actionsView() {
  return { el: [
    actionForm("Unsubscribe a user", [["User", input("user", true)], ["Channel", input("channel", true)],
      ["Client ID", input("client"), "Optional: only this connection."]], "Unsubscribe",
    (v) => `unsubscribe user "${v.user}"${v.client ? ` (client ${v.client})` : ""} from ${v.channel}`, "unsubscribe"),
    actionForm("Disconnect a user", [["User", input("user", true)],
      ["Client ID", input("client"), "Optional: only this connection."]], "Disconnect",
    (v) => `disconnect user "${v.user}"${v.client ? ` (client ${v.client})` : ""}`, "disconnect"),
    actionForm("Remove history", [["Channel", input("channel", true)]], "Remove history",
      (v) => `remove the history of ${v.channel}`, "history_remove"),
  ] };
}

function connectionsView(channel) {
  const user = input("user");
  const ch = h("input", { name: "channel", autocomplete: "off", value: channel || "" });
  const out = status();
  const holder = h("div");
  const form = h("form", { class: "card" }, field("User", user, "Optional: only this user's connections."),
    field("Channel", ch, "Optional: only connections subscribed to this channel."),
    h("button", { type: "submit", text: "Show connections" }), out);
  async function load() {
    const params = Object.fromEntries([["user", user.value.trim()], ["channel", ch.value.trim()]].filter(([, v]) => v));
    const reply = await call("connections", params);
    if (reply.error) return show(out, errorText(reply.error), false);
    const conns = Object.entries(reply.result.connections || {}).sort(([, a], [, b]) => (a.user || "").localeCompare(b.user || ""));
    show(out, `${conns.length} connection${conns.length === 1 ? "" : "s"}`, true);
    // Centrifugo's ConnectionInfo (user, transport, protocol, app_name/app_version, state.channels), plus the node.
    holder.replaceChildren(table("Connections", ["Client", "User", "Transport", "App", "Channels", "Node"],
      conns.map(([id, c]) => [id, c.user || "", [c.transport, c.protocol].filter(Boolean).join(", "),
        [c.app_name, c.app_version].filter(Boolean).join(" "),
        Object.keys((c.state && c.state.channels) || {}).sort().join(", "), c.node || ""])));
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); load(); });
  load();
  return { el: [form, holder] };
}

const TITLES = { nodes: "Nodes", channels: "Channels", publish: "Publish", presence: "Presence", history: "History",
  tail: "Live tail", actions: "Actions", connections: "Connections" };
const BUILDERS = { nodes: nodesView, channels: channelsView, publish: publishView, presence: presenceView,
  history: historyView, tail: tailView, actions: actionsView, connections: connectionsView };

// --- shell -------------------------------------------------------------------------------------------

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = `This will ${text}.`;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

function stopView() {
  if (state.stop) state.stop();
  state.stop = null;
}

function render(content, title) {
  const main = document.getElementById("main");
  main.replaceChildren(...[content].flat());
  document.title = `${title} · Fugato admin`;
}

function route() {
  if (!state.token && !state.insecure) return;
  const [name, arg] = location.hash.replace(/^#/, "").split("/");
  const view = VIEWS.includes(name) && (name !== "connections" || state.hasConnections) ? name : "nodes";
  stopView();
  const built = BUILDERS[view](arg ? decodeURIComponent(arg) : "");
  const heading = h("h2", { tabindex: "-1", text: TITLES[view] });
  render([heading, ...built.el], TITLES[view]);
  state.stop = built.stop || null;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === `#${view}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  heading.focus();
}

async function enter() {
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = state.insecure;
  // The Connections view exists when the server has the `connections` API method.
  state.hasConnections = state.methods.includes("connections");
  if (state.hasConnections && !document.querySelector('#nav a[href="#connections"]')) {
    document.querySelector("#nav ul").append(h("li", {}, h("a", { href: "#connections", text: "Connections" })));
  }
  route();
}

async function boot() {
  document.getElementById("logout").addEventListener("click", () => logout(""));
  window.addEventListener("hashchange", route);
  let init = { authenticated: false, insecure: false };
  try {
    const response = await fetch("admin/init", { headers: authHeaders() });
    if (response.ok) init = await response.json();
  } catch (e) {
    render(h("p", { role: "alert", class: "status error", text: "The server cannot be reached." }), "Error");
    return;
  }
  state.insecure = !!init.insecure;
  state.methods = init.methods || [];
  if (init.node) document.getElementById("served").textContent = `Served by node ${init.node.name}`;
  document.getElementById("insecure").hidden = !state.insecure;
  if (init.authenticated) enter();
  else logout("");
}

boot();
