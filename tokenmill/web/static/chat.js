// The chat page: streams /v1/chat/completions through fetch (so the API key travels in a
// header), renders answers as sanitised markdown, keeps conversations in localStorage.
"use strict";

const STORE = "tokenmill.conversations";
const MODEL_KEY = "tokenmill.model";
const SETTINGS = "tokenmill.chatSettings";
const PARAMS = ["temperature", "top_p", "top_k", "min_p", "max_tokens", "seed", "frequency_penalty",
                "presence_penalty", "repetition_penalty"];
const $ = (id) => document.getElementById(id);

const chat = {
  conversations: [],
  current: null,          // id of the open conversation
  model: null,
  maxModelLen: null,
  controller: null,       // AbortController of the answer being streamed
  recommended: null,      // the model's recommended sampling, from /tokenmill/info
  finished: 0,            // answers ended (for the console and the browser tests)
};
window.tmChat = chat;

// ---- storage -----------------------------------------------------------------------------
function load() {
  try { chat.conversations = JSON.parse(localStorage.getItem(STORE) || "[]"); } catch (e) { chat.conversations = []; }
  if (!Array.isArray(chat.conversations)) chat.conversations = [];
  chat.current = chat.conversations.length ? chat.conversations[0].id : null;
  let s = {};
  try { s = JSON.parse(localStorage.getItem(SETTINGS) || "{}") || {}; } catch (e) { s = {}; }
  for (const p of PARAMS) $("p-" + p).value = s[p] ?? "";
  $("p-stop").value = s.stop ?? "";
  $("system").value = s.system ?? "";
}

function save() {
  localStorage.setItem(STORE, JSON.stringify(chat.conversations));
}

// The model's recommended sampling (the server's /tokenmill/info) goes into the fields the
// user has left empty, so that what is sent is what is shown; the API's own defaults
// (temperature 1) serve a first chat badly (bench/first_chat.py).
function applyRecommended(sampling) {
  if (!sampling || !sampling.params) return;
  chat.recommended = sampling;
  for (const [name, value] of Object.entries(sampling.params)) {
    const field = $("p-" + name);
    if (field && field.value === "") field.value = String(value);
  }
  $("sampling-source").textContent = sampling.source ? "defaults: " + sampling.source : "";
}

function saveSettings() {
  const s = {system: $("system").value, stop: $("p-stop").value};
  for (const p of PARAMS) s[p] = $("p-" + p).value;
  localStorage.setItem(SETTINGS, JSON.stringify(s));
}

function newId() { return Date.now().toString(36) + Math.random().toString(36).slice(2, 8); }

function conversation() {
  let c = chat.conversations.find((x) => x.id === chat.current);
  if (!c) {
    c = {id: newId(), title: "New chat", created: new Date().toISOString(), messages: []};
    chat.conversations.unshift(c);
    chat.current = c.id;
  }
  return c;
}

// ---- request -----------------------------------------------------------------------------
function samplingParams() {
  const body = {};
  for (const p of PARAMS) {
    const v = $("p-" + p).value.trim();
    if (v !== "") body[p] = Number.isInteger(Number(v)) && ["top_k", "max_tokens", "seed"].includes(p) ? parseInt(v, 10) : Number(v);
  }
  const stop = $("p-stop").value.split("\n").filter((s) => s.length);
  if (stop.length) body.stop = stop.slice(0, 4);
  return body;
}

function apiMessages(c) {
  const out = [];
  const system = $("system").value.trim();
  if (system) out.push({role: "system", content: system});
  for (const m of c.messages) out.push({role: m.role, content: m.content});
  return out;
}

async function generate(opts) {
  const c = conversation();
  const continuing = !!(opts && opts.continueLast);
  let msg;
  if (continuing) {
    msg = c.messages[c.messages.length - 1];
  } else {
    msg = {role: "assistant", content: ""};
    c.messages.push(msg);
  }
  const body = Object.assign({model: chat.model, messages: apiMessages(c), stream: true,
                              stream_options: {include_usage: true}}, samplingParams());
  if (continuing) { body.continue_final_message = true; body.add_generation_prompt = false; }
  if (!continuing) body.messages.pop();  // the empty answer being written is not sent
  const started = performance.now();
  let first = null, chunks = 0, finish = null, usage = null, failed = null;
  chat.controller = new AbortController();
  setBusy(true);
  render();
  const view = lastBody();
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers: TM.headers(), body: JSON.stringify(body),
                                                    signal: chat.controller.signal});
    if (!r.ok) {
      let data = null;
      try { data = await r.json(); } catch (e) { /* not JSON */ }
      throw new Error(TM.errorMessage(data, r.status) + (r.status === 401 ? " (set the API key: top right)" : ""));
    }
    await TM.readSSE(r, (event, data) => {
      if (data === "[DONE]") return;
      const ev = JSON.parse(data);
      if (ev.error) { failed = ev.error.message || JSON.stringify(ev.error); return; }
      if (ev.usage) usage = ev.usage;
      for (const ch of ev.choices || []) {
        const thought = (ch.delta && ch.delta.reasoning_content) || "";
        if (thought) {  // a thinking model's reasoning: kept apart, folded above the answer
          if (first === null) first = performance.now();
          const fresh = !msg.reasoning;
          msg.reasoning = (msg.reasoning || "") + thought;
          if (fresh) render(); else scheduleRender(view, msg);
        }
        const text = (ch.delta && ch.delta.content) || "";
        if (text) {
          if (first === null) first = performance.now();
          chunks += 1;
          msg.content += text;
          scheduleRender(view, msg);
        }
        if (ch.finish_reason) finish = ch.finish_reason;
      }
    });
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else failed = e.message;
  } finally {
    chat.controller = null;
  }
  const ended = performance.now();
  const tokens = usage ? usage.completion_tokens : chunks;
  const previous = continuing && msg.stats ? msg.stats.tokens || 0 : 0;
  msg.stats = {
    tokens: tokens + previous,
    ttft_ms: first === null ? null : first - started,
    tok_s: first !== null && tokens > 1 ? (tokens - 1) / ((ended - first) / 1000) : null,
    finish: finish || (failed ? "error" : null),
    context: usage ? usage.prompt_tokens + usage.completion_tokens : null,
  };
  if (!msg.content && !continuing && failed) c.messages.pop();
  if (c.title === "New chat") {
    const u = c.messages.find((m) => m.role === "user");
    if (u) c.title = u.content.slice(0, 48);
  }
  save();
  $("error").textContent = failed || "";
  setBusy(false);
  chat.finished += 1;
  render();
}

// ---- rendering ---------------------------------------------------------------------------
const escapeHtml = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
// raw HTML in an answer is shown as text, not interpreted
marked.use({gfm: true, breaks: false, renderer: {html(token) { return escapeHtml(typeof token === "string" ? token : token.text); }}});
const PURIFY = {FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"],
                FORBID_ATTR: ["style"]};

function markdown(text) {
  // marked turns markdown into HTML (raw HTML escaped); DOMPurify then removes anything that
  // could run or load (scripts, event handlers, javascript: links, images) before it reaches
  // the page. The CSP is the third wall: no inline script runs on these pages at all.
  return DOMPurify.sanitize(marked.parse(text), PURIFY);
}

function addCopyButtons(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (pre.querySelector("button.copy")) continue;
    const code = pre.querySelector("code") || pre;
    pre.append(TM.el("button", {class: "copy", type: "button", text: "Copy", onclick: async (ev) => {
      const b = ev.currentTarget;
      try { await navigator.clipboard.writeText(code.textContent); b.textContent = "Copied"; }
      catch (e) { b.textContent = "Copy failed"; }
      setTimeout(() => { b.textContent = "Copy"; }, 1200);
    }}));
  }
}

// re-rendering the whole answer's markdown costs CPU that the server may need (on a small
// machine both share the cores): at most every 80 ms
let pending = null;
function scheduleRender(view, msg) {
  if (pending) return;
  pending = setTimeout(() => {
    pending = null;
    const v = view && view.isConnected ? view : lastBody();
    if (!v) return;
    v.innerHTML = markdown(msg.content); addCopyButtons(v);
    const thought = v.parentElement.querySelector("details.reasoning .thought");
    if (thought) thought.textContent = msg.reasoning || "";
    scrollDown();
  }, 80);
}

function lastBody() {
  const all = document.querySelectorAll("#messages .msg .body");
  return all.length ? all[all.length - 1] : null;
}

function scrollDown() {
  const m = $("messages");
  m.scrollTop = m.scrollHeight;
}

function statsLine(s) {
  if (!s) return "";
  const parts = [`${s.tokens} tokens`];
  if (s.ttft_ms !== null && s.ttft_ms !== undefined) parts.push(`TTFT ${Math.round(s.ttft_ms)} ms`);
  if (s.tok_s) parts.push(`${TM.fmt(s.tok_s, 1)} tok/s`);
  if (s.finish) parts.push(`finish: ${s.finish}`);
  return parts.join(" · ");
}

function render() {
  const c = chat.conversations.find((x) => x.id === chat.current);
  const box = $("messages");
  box.textContent = "";
  const messages = c ? c.messages : [];
  messages.forEach((m, i) => {
    const streaming = chat.controller && i === messages.length - 1 && m.role === "assistant";
    const body = TM.el("div", {class: "body"});
    if (m.role === "assistant") { body.innerHTML = markdown(m.content); addCopyButtons(body); }
    else body.textContent = m.content;
    const reasoning = m.role === "assistant" && m.reasoning ? TM.el("details", {class: "reasoning"},
      TM.el("summary", {text: streaming && !m.content ? "Thinking…" : "Thought"}),
      TM.el("div", {class: "thought", text: m.reasoning})) : null;
    box.append(TM.el("div", {class: `msg ${m.role}${streaming ? " streaming" : ""}`},
      TM.el("div", {class: "who", text: m.role}), reasoning, body,
      m.role === "assistant" && !streaming ? TM.el("div", {class: "stats", text: statsLine(m.stats)}) : null));
  });
  const last = messages[messages.length - 1];
  const busy = !!chat.controller;
  $("regenerate").disabled = busy || !last || last.role !== "assistant";
  $("edit-last").disabled = busy || !messages.some((m) => m.role === "user");
  $("continue").classList.toggle("hidden", busy || !last || last.role !== "assistant" ||
                                 !last.stats || last.stats.finish !== "length");
  const ctxUsed = [...messages].reverse().find((m) => m.stats && m.stats.context);
  const used = ctxUsed ? ctxUsed.stats.context : 0;
  $("ctx-text").textContent = chat.maxModelLen ? `context: ${used} / ${chat.maxModelLen} tokens` : `context: ${used} tokens`;
  $("ctx-bar").firstElementChild.style.width = chat.maxModelLen ? `${Math.min(100, 100 * used / chat.maxModelLen)}%` : "0";
  renderList();
  scrollDown();
}

function renderList() {
  const ul = $("conversations");
  ul.textContent = "";
  for (const c of chat.conversations) {
    ul.append(TM.el("li", {class: c.id === chat.current ? "active" : "", onclick: () => {
      if (chat.controller) return;
      chat.current = c.id; $("error").textContent = ""; render();
    }}, TM.el("span", {class: "title", text: c.title || "Untitled", title: c.title}),
       TM.el("button", {type: "button", text: "×", title: "Delete", onclick: (ev) => {
         ev.stopPropagation();
         if (chat.controller) return;
         chat.conversations = chat.conversations.filter((x) => x.id !== c.id);
         if (chat.current === c.id) chat.current = chat.conversations.length ? chat.conversations[0].id : null;
         save(); render();
       }})));
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

// ---- import / export ---------------------------------------------------------------------
function exportAll() {
  const data = {format: "tokenmill-conversations", version: 1, exported: new Date().toISOString(),
                conversations: chat.conversations};
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], {type: "application/json"}));
  const a = TM.el("a", {href: url, download: "tokenmill-conversations.json"});
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function importFile(file) {
  const reader = new FileReader();
  reader.onload = () => {
    try {
      const data = JSON.parse(reader.result);
      const list = Array.isArray(data) ? data : data.conversations;
      if (!Array.isArray(list)) throw new Error("no `conversations` list in this file");
      let added = 0;
      for (const c of list) {
        if (!c || !Array.isArray(c.messages)) continue;
        const messages = c.messages.filter((m) => m && ["user", "assistant", "system"].includes(m.role) && typeof m.content === "string")
          .map((m) => ({role: m.role, content: m.content, stats: m.stats, reasoning: typeof m.reasoning === "string" ? m.reasoning : undefined}));
        const id = chat.conversations.some((x) => x.id === c.id) || !c.id ? newId() : String(c.id);
        chat.conversations.unshift({id, title: String(c.title || "Imported"), created: c.created || new Date().toISOString(), messages});
        added += 1;
      }
      save(); render();
      $("error").textContent = added ? "" : "nothing to import in that file";
    } catch (e) {
      $("error").textContent = "import failed: " + e.message;
    }
  };
  reader.readAsText(file);
}

// The model the chat talks to: its context (from /v1/models, or /tokenmill/info once it is
// loaded) and its recommended sampling for the fields left empty.
async function useModel(id, models) {
  chat.model = id;
  $("model-name").textContent = id;
  const listed = models.find((m) => m.id === id);
  chat.maxModelLen = listed && listed.max_model_len ? listed.max_model_len : null;
  render();
  try {
    const info = await TM.api("/tokenmill/info?model=" + encodeURIComponent(id));
    // a store's other model answers until this one is loaded; a router's route names pass
    if (info.model === id || !(info.models || []).includes(id)) {
      chat.maxModelLen = info.max_model_len || chat.maxModelLen;
      applyRecommended(info.sampling);
    }
    render();
  } catch (e) { /* an upstream without /tokenmill/info: no context bar */ }
}

// ---- wiring ------------------------------------------------------------------------------
async function init() {
  TM.nav("/");
  load();
  render();
  // settings are kept from the first moment, not once the server has answered below
  for (const p of PARAMS) $("p-" + p).addEventListener("change", saveSettings);
  $("p-stop").addEventListener("change", saveSettings);
  $("system").addEventListener("change", saveSettings);
  $("reset-settings").addEventListener("click", () => {
    for (const p of PARAMS) $("p-" + p).value = "";
    $("p-stop").value = ""; $("system").value = "";
    applyRecommended(chat.recommended);
    saveSettings();
  });
  try {
    const models = (await TM.api("/v1/models")).data;
    const ids = models.map((m) => m.id);
    const saved = localStorage.getItem(MODEL_KEY);
    const pick = $("model-pick");
    if (ids.length > 1) {  // a store: the server loads the model picked on demand
      pick.replaceChildren(...ids.map((id) => TM.el("option", {value: id, text: id})));
      pick.value = ids.includes(saved) ? saved : ids[0];
      pick.classList.remove("hidden");
      pick.addEventListener("change", () => {
        localStorage.setItem(MODEL_KEY, pick.value);
        useModel(pick.value, models);
      });
    }
    await useModel(ids.includes(saved) ? saved : ids[0], models);
  } catch (e) {
    $("model-name").textContent = "(no model)";
    $("error").textContent = e.message + (e.status === 401 ? " (set the API key: top right)" : "");
  }

  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("input").value;
    if (!text.trim() || chat.controller) return;
    $("input").value = "";
    conversation().messages.push({role: "user", content: text});
    save();
    generate();
  });
  $("input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => { if (chat.controller) chat.controller.abort(); });
  $("regenerate").addEventListener("click", () => {
    const c = conversation();
    if (c.messages.length && c.messages[c.messages.length - 1].role === "assistant") c.messages.pop();
    save(); generate();
  });
  $("edit-last").addEventListener("click", () => {
    const c = conversation();
    const i = c.messages.map((m) => m.role).lastIndexOf("user");
    if (i < 0) return;
    $("input").value = c.messages[i].content;
    c.messages.splice(i);
    save(); render(); $("input").focus();
  });
  $("continue").addEventListener("click", () => generate({continueLast: true}));
  $("new-chat").addEventListener("click", () => {
    if (chat.controller) return;
    chat.current = null; conversation(); save(); render(); $("input").focus();
  });
  $("export").addEventListener("click", exportAll);
  $("import").addEventListener("change", (ev) => { if (ev.target.files[0]) importFile(ev.target.files[0]); ev.target.value = ""; });
}

document.addEventListener("DOMContentLoaded", init);
