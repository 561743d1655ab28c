// The medscope page: plain DOM code, no framework, no network beyond this server.
// Server data is only ever inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, token: sessionStorage.getItem("medscope-token") || "", file: null };

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", "Bearer " + state.token);
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) $("token-box").hidden = false;
  if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
  return body;
}

function pct(p) { return (100 * p).toFixed(1) + " %"; }

function fact(list, name, value) {
  if (value === undefined || value === null || value === "") return;
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = name;
  dd.textContent = value;
  list.append(dt, dd);
}

function withCi(metrics, key) {
  const value = metrics[key];
  if (typeof value !== "number") return null;
  const ci = metrics.ci && metrics.ci[key];
  const level = metrics.ci ? Math.round(100 * metrics.ci.level) : 95;
  return value.toFixed(3) + (ci ? ` (${level}% CI ${ci.low.toFixed(3)}–${ci.high.toFixed(3)})` : "");
}

function showModel(info) {
  const list = $("model-info");
  list.replaceChildren();
  const m = info.metrics || {};
  fact(list, "Model", `${info.id} (${info.name})`);
  fact(list, "Classes", info.classes.join(", "));
  fact(list, "Input", `${info.img_size} × ${info.img_size} px, ${info.in_chans === 1 ? "grayscale" : "colour"}`);
  if (info.members) {
    fact(list, "Ensemble of", info.members.map((x) => `${x.name} at ${x.img_size} px (T ${x.temperature.toFixed(3)})`).join(", "));
  }
  fact(list, "Evaluated on", m.n ? `${m.n} held-out images` : "no metrics.json in the run");
  fact(list, "Accuracy", withCi(m, "accuracy"));
  fact(list, "Balanced acc.", withCi(m, "balanced_accuracy"));
  fact(list, "F1 macro", withCi(m, "f1_macro"));
  fact(list, "ROC-AUC macro", withCi(m, "roc_auc_macro"));
  if (m.calibration) fact(list, "Calibration ECE", `${m.calibration.ece.toFixed(3)} (before: ${m.calibration.ece_uncalibrated.toFixed(3)})`);
  fact(list, "Temperature", info.temperature === null ? "each member's own, then averaged"
    : info.temperature === 1 ? "1 (uncalibrated)" : info.temperature.toFixed(3));
  fact(list, "Refer below", info.refer_below === null ? info.refer_rule
    : `${pct(info.refer_below)} confidence — ${info.refer_rule}`);
  fact(list, "Heat maps", !info.heatmap ? "not available" : info.members ? `Grad-CAM of ${info.members[0].name}` : "Grad-CAM");
  $("calibrated").textContent = info.temperature === 1 ? "" : " (temperature-calibrated)";
}

function showResult(result) {
  $("error").hidden = true;
  $("result").hidden = false;
  $("label").textContent = result.label || "(no label above its threshold)";
  $("confidence").textContent = "confidence " + pct(result.confidence);
  // refer_to_expert is null when the model has no refer threshold: no banner then.
  $("refer").hidden = result.refer_to_expert !== true;
  $("refer-detail").textContent = result.refer_to_expert !== true ? "" :
    `Confidence ${pct(result.confidence)} is below this model's threshold of ${pct(result.refer_below)}.`;
  const entries = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  const bars = $("bars");
  bars.replaceChildren();
  entries.forEach(([name, p], i) => {
    const li = document.createElement("li");
    if (i === 0) li.className = "top";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    label.title = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = (100 * p).toFixed(1) + "%";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = pct(p);
    li.append(label, track, value);
    bars.append(li);
  });
  const heat = $("heatmap");
  if (result.heatmap_png_base64) {
    heat.src = "data:image/png;base64," + result.heatmap_png_base64;
    $("overlay-wrap").hidden = false;
    heat.hidden = !$("overlay-toggle").checked;
  } else {
    heat.removeAttribute("src");
    heat.hidden = true;
    $("overlay-wrap").hidden = true;
  }
}

function showError(message) {
  $("result").hidden = true;
  $("error").hidden = false;
  $("error").textContent = message;
}

async function analyse() {
  if (!state.file || !state.model) return;
  const form = new FormData();
  form.append("file", state.file, "upload");
  $("placeholder").hidden = true;
  $("busy").hidden = false;
  try {
    showResult(await api("/api/predict?model=" + encodeURIComponent(state.model),
                         { method: "POST", body: form }));
  } catch (err) {
    showError(err.message);
  } finally {
    $("busy").hidden = true;
  }
}

function choose(file) {
  if (!file) return;
  state.file = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  $("heatmap").hidden = true;
  $("filename").textContent = file.name;
  $("figure").hidden = false;
  analyse();
}

async function selectModel(id) {
  state.model = id;
  showModel(await api("/api/model?model=" + encodeURIComponent(id)));
  analyse();
}

async function start() {
  try {
    const config = await api("/api/config");
    $("drop-hint").textContent += ` · up to ${config.max_upload_mb} MB`;
    const listing = await api("/api/models");
    $("token-box").hidden = true;
    const picker = $("model-picker");
    picker.replaceChildren(...listing.models.map((m) => new Option(`${m.id} — ${m.name}`, m.id)));
    picker.value = listing.default;
    $("picker-wrap").hidden = listing.models.length < 2;
    await selectModel(listing.default);
  } catch (err) {
    showError(err.message);
  }
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
$("model-picker").addEventListener("change", (e) => selectModel(e.target.value).catch((err) => showError(err.message)));
$("overlay-toggle").addEventListener("change", (e) => {
  $("heatmap").hidden = !e.target.checked || !$("heatmap").getAttribute("src");
});
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  choose(e.dataTransfer.files[0]);
});
$("token-box").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("medscope-token", state.token);
  start();
});
start();
