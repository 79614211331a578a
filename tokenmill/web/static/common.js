// Shared by the three pages: the API key (kept in this browser only), authenticated fetch,
// SSE read through fetch streaming (EventSource cannot send an Authorization header), and
// the navigation bar.
"use strict";

const TM = {
  keyName: "tokenmill.apiKey",
  get apiKey() { return localStorage.getItem(TM.keyName) || ""; },
  set apiKey(v) { v ? localStorage.setItem(TM.keyName, v) : localStorage.removeItem(TM.keyName); },

  headers(extra) {
    const h = Object.assign({"Content-Type": "application/json"}, extra || {});
    if (TM.apiKey) h["Authorization"] = "Bearer " + TM.apiKey;
    return h;
  },

  // JSON in, JSON out; an error answer becomes an Error carrying the server's own message
  async api(path, body, opts) {
    const init = Object.assign({method: body === undefined ? "GET" : "POST", headers: TM.headers()}, opts || {});
    if (body !== undefined) init.body = JSON.stringify(body);
    const r = await fetch(path, init);
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = {raw: text}; }
    if (!r.ok) {
      const err = new Error(TM.errorMessage(data, r.status));
      err.status = r.status;
      throw err;
    }
    return data;
  },

  errorMessage(data, status) {
    if (data && data.error) {
      if (typeof data.error === "string") return `${status}: ${data.error}`;
      if (data.error.message) return `${status}: ${data.error.message}`;
    }
    if (data && data.detail) return `${status}: ${JSON.stringify(data.detail)}`;
    return `HTTP ${status}`;
  },

  // Reads a text/event-stream response; calls onEvent(eventName, dataString) per event.
  async readSSE(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut).replace(/^\r?\n\r?\n/, "");
        let name = "message", data = [];
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, data.join("\n"));
      }
    }
  },

  el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  },

  nav(active) {
    const bar = document.getElementById("nav");
    if (!bar) return;
    const links = [["/", "Chat"], ["/dashboard", "Dashboard"], ["/explain", "Token explorer"]];
    bar.append(TM.el("span", {class: "brand", text: "tokenmill"}));
    for (const [href, label] of links)
      bar.append(TM.el("a", {href, class: href === active ? "active" : "", text: label}));
    const key = TM.el("button", {class: "key", type: "button", id: "api-key-button",
      text: TM.apiKey ? "API key ✓" : "API key", title: "Set the API key this browser sends",
      onclick: () => {
        const v = prompt("API key for this server (kept in this browser only; empty to clear):", TM.apiKey);
        if (v !== null) { TM.apiKey = v.trim(); location.reload(); }
      }});
    bar.append(key);
  },

  fmt(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    return Number(x).toFixed(digits === undefined ? 2 : digits);
  },
};
