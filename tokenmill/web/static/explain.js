// The token explorer: POST /tokenmill/explain, then the prompt's tokens, the answer's tokens,
// and for a chosen step the candidates at every sampler stage. Sliders re-run that one step
// (the same endpoint with output_token_ids and max_tokens 1).
"use strict";

const $ = (id) => document.getElementById(id);
const KNOBS = ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"];

const ex = {result: null, step: null, rerun: null, timer: null, seq: 0};
window.tmExplain = ex;  // for the console and the browser tests

function visible(text) {
  // spaces and line ends made visible inside a token chip
  return text.replace(/ /g, "·").replace(/\n/g, "↵\n").replace(/\t/g, "→");
}

function chip(t, extra) {
  const e = TM.el("span", {class: "tok" + (t.special ? " special" : "") + (extra || ""), title: `id ${t.id}`},
                  visible(t.text), TM.el("span", {class: "id", text: String(t.id)}));
  e.dataset.id = t.id;
  return e;
}

function generalParams() {
  const p = {};
  for (const k of KNOBS.concat(["seed", "max_tokens", "top_n"])) {
    const v = $("g-" + k).value.trim();
    if (v !== "") p[k] = ["top_k", "seed", "max_tokens", "top_n"].includes(k) ? parseInt(v, 10) : Number(v);
  }
  return p;
}

async function run() {
  $("error").textContent = "";
  $("run").disabled = true;
  const body = generalParams();
  const text = $("text").value;
  if (document.querySelector("input[name=mode]:checked").value === "chat") body.messages = [{role: "user", content: text}];
  else body.prompt = text;
  try {
    ex.result = await TM.api("/tokenmill/explain", body);
    ex.params = body;
    showResult();
    if (ex.result.steps.length) selectStep(0);
  } catch (e) {
    $("error").textContent = e.message + (e.status === 401 ? " (set the API key: top right)" : "");
  } finally {
    $("run").disabled = false;
  }
}

function showResult() {
  const r = ex.result;
  const pt = $("prompt-tokens");
  pt.textContent = "";
  for (const t of r.prompt.tokens) pt.append(chip(t));
  $("prompt-count").textContent = `${r.prompt.tokens.length} tokens after the chat template`;
  const at = $("answer-tokens");
  at.textContent = "";
  r.steps.forEach((s, i) => {
    const c = chip({id: s.token.id, text: s.token.text}, " step");
    c.dataset.step = i;
    c.addEventListener("click", () => selectStep(i));
    at.append(c);
  });
  $("answer-meta").textContent = `${r.steps.length} tokens · finish: ${r.finish_reason}`;
}

function selectStep(i) {
  ex.step = i;
  ex.rerun = null;
  for (const c of document.querySelectorAll("#answer-tokens .tok")) c.classList.toggle("selected", Number(c.dataset.step) === i);
  const p = ex.result.params;
  for (const k of KNOBS) {
    const v = k === "top_k" ? Math.max(0, p[k]) : p[k];
    $("s-" + k).value = v;
    $("o-" + k).textContent = String(v);
  }
  showStep(ex.result.steps[i], false);
}

function showStep(step, rerun) {
  const r = ex.result;
  $("step-title").textContent = `${step.index + 1} of ${r.steps.length}` + (rerun ? " (re-run with the sliders)" : "");
  $("step-summary").textContent = `${step.kept} token${step.kept === 1 ? "" : "s"} left to draw from; ` +
    (rerun ? "would draw" : "drew") + ` ${JSON.stringify(step.token.text)} (id ${step.token.id})`;
  const body = document.querySelector("#candidates tbody");
  body.textContent = "";
  for (const c of step.candidates) {
    const sampled = c.id === step.token.id;
    const bar = TM.el("div", {class: "pbar"}, TM.el("span"));
    bar.firstElementChild.style.width = (100 * c.p_filtered).toFixed(2) + "%";
    const row = TM.el("tr", {class: (sampled ? "sampled" : "") + (c.p_filtered === 0 ? " dropped" : "")},
      TM.el("td", {text: sampled ? "★" : ""}), TM.el("td", {class: "tokcell", text: visible(c.text)}),
      TM.el("td", {class: "num", text: String(c.id)}), TM.el("td", {class: "num", text: c.logprob.toFixed(4)}),
      TM.el("td", {class: "num", text: c.p_raw.toFixed(4)}), TM.el("td", {class: "num", text: c.p_penalized.toFixed(4)}),
      TM.el("td", {class: "num", text: c.p_tempered.toFixed(4)}), TM.el("td", {class: "num", text: c.p_filtered.toFixed(4)}),
      TM.el("td", {}, bar));
    Object.assign(row.dataset, {id: c.id, logprob: c.logprob, pRaw: c.p_raw, pPenalized: c.p_penalized,
                                pTempered: c.p_tempered, pFinal: c.p_filtered});
    body.append(row);
  }
}

function onSlider() {
  for (const k of KNOBS) $("o-" + k).textContent = $("s-" + k).value;
  clearTimeout(ex.timer);
  ex.timer = setTimeout(rerunStep, 150);
}

async function rerunStep() {
  if (ex.step === null || !ex.result) return;
  const r = ex.result, step = r.steps[ex.step];
  const body = {prompt_token_ids: r.prompt.tokens.map((t) => t.id),
                output_token_ids: r.steps.slice(0, step.index).map((s) => s.token.id),
                max_tokens: 1, top_n: ex.params.top_n || 10};
  if (ex.params.seed !== undefined) body.seed = ex.params.seed;
  for (const k of KNOBS) body[k] = Number($("s-" + k).value);
  if (body.top_k === 0) body.top_k = -1;
  const seq = ++ex.seq;
  try {
    const out = await TM.api("/tokenmill/explain", body);
    if (seq !== ex.seq) return;  // a newer slider position has been sent
    ex.rerun = out.steps[0];
    showStep(ex.rerun, true);
  } catch (e) {
    $("error").textContent = e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  TM.nav("/explain");
  $("run").addEventListener("click", run);
  for (const k of KNOBS) $("s-" + k).addEventListener("input", onSlider);
  $("show-ids").addEventListener("change", (ev) => {
    for (const id of ["prompt-tokens", "answer-tokens"]) $(id).classList.toggle("show-ids", ev.target.checked);
  });
});
