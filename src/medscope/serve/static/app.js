// The medscope page: plain DOM code, no framework, no network beyond this server.
// Server data is only ever inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null, token: sessionStorage.getItem("medscope-token") || "",
  file: null, slide: null,  // what is analysed: an uploaded file or a slide of the server's folder
  view: { scale: 1, x: 0, y: 0, width: 1, height: 1 },  // the zoomable viewer
  result: null,
};
const REASONS = {
  "no usable field": "No tile of the image passed the artifact filter: no call is made.",
  "too few usable tiles": "Too few tiles passed the artifact filter to rely on the call.",
  "tiles disagree": "The tiles disagree: too few of them point to the called class.",
  "low confidence": "The image-level probability is below this model's threshold.",
  "unlike the training images": "It looks unlike anything the model was trained on: its call means little.",
  "blank image": "The image is one flat colour: there is no specimen to classify.",
  "degenerate image": "The image is too small or too thin to hold a specimen.",
};

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
  const t = info.tiling;
  fact(list, "Large images", !t ? "never tiled (no training scale recorded)"
    : `tiled at ${t.tile_px} px (stride ${t.stride_px} px${t.mpp ? `, ${t.mpp} µm/px` : ""})`);
  $("tiling-hint").textContent = t ? `images from ${Math.ceil(1.5 * t.tile_px)} px a side are tiled at ${t.tile_px} px`
    : "this model does not tile";
  $("calibrated").textContent = info.temperature === 1 ? "" : " (temperature-calibrated)";
}

function showResult(result) {
  state.result = result;
  $("error").hidden = true;
  $("result").hidden = false;
  showBars(result.probabilities || {});
  if (result.tiled) showTiled(result); else showWhole(result);
}

function showWhole(result) {
  document.querySelector("main").classList.remove("wide");
  $("tiled-view").hidden = true;
  $("tile-facts").hidden = true;
  $("figure").hidden = !state.file;
  $("label").textContent = result.label || "(no label above its threshold)";
  $("confidence").textContent = "confidence " + pct(result.confidence);
  // refer_to_expert is null when the model has no refer threshold: no banner then.
  const reason = result.refer_reason || "low confidence";
  $("refer").hidden = result.refer_to_expert !== true;
  $("refer-title").textContent = reason === "low confidence" ? "Low confidence — refer to an expert."
    : `Refer to an expert: ${reason}.`;
  $("refer-detail").textContent = result.refer_to_expert !== true ? "" : reason !== "low confidence"
    ? REASONS[reason] || ""
    : `Confidence ${pct(result.confidence)} is below this model's threshold of ${pct(result.refer_below)}.`;
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

function showBars(probabilities) {
  const entries = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
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
}

// ---- a whole micrograph or slide, in tiles ----

function showTiled(result) {
  const t = result.tiling;
  document.querySelector("main").classList.add("wide");
  $("figure").hidden = true;
  $("tiled-view").hidden = false;
  $("label").textContent = result.label || "No call";
  const used = t.kept - t.unusual;  // flagged tiles are classified but never aggregated
  $("confidence").textContent = result.label
    ? `image-level probability ${pct(result.confidence)} · ${t.aggregation} of ${used} tile${used === 1 ? "" : "s"}`
    : "no tile could be classified";
  $("refer").hidden = !result.refer_to_expert;
  $("refer-title").textContent = `Refer to an expert: ${result.refer_reason || "see below"}.`;
  $("refer-detail").textContent = referDetail(result);
  showTileFacts(result);
  $("legend-unusual").hidden = !t.unusual;
  showViewer(result);
  showDecisive(result);
}

function referDetail(result) {
  const t = result.tiling;
  const base = result.refer_reason === "unlike the training images"
    ? `Most classified tiles look unlike the training images (${t.unusual} of ${t.kept}); they are not counted.`
    : REASONS[result.refer_reason] || "";
  if (result.refer_reason === "tiles disagree" && t.agreement !== null)
    return `Only ${pct(t.agreement)} of the used tiles call ${result.label} (at least ${pct(t.refer_rule.min_agreement)} needed).`;
  if (result.refer_reason === "too few usable tiles")
    return `Only ${t.kept} usable tile${t.kept === 1 ? "" : "s"} (at least ${t.refer_rule.min_tiles} needed).`;
  if (result.refer_reason === "low confidence") {
    // Two thresholds may apply: the image-level rule's and the model's validated one.
    const bar = Math.max(t.refer_rule.min_confidence, result.refer_below || 0);
    return `Image-level probability ${pct(result.confidence)} is below ${pct(bar)}.`;
  }
  return base;
}

function showTileFacts(result) {
  const t = result.tiling;
  const list = $("tile-facts");
  list.replaceChildren();
  list.hidden = false;
  fact(list, "Image", `${result.image.width} × ${result.image.height} px` + (t.whole_image ? " (smaller than one tile: analysed whole)" : ""));
  fact(list, "Tiles", `${t.read} read · ${t.kept - t.unusual} used · ${t.dropped_total} dropped`
    + (t.unusual ? ` · ${t.unusual} unusual` : "") + (t.failed ? ` · ${t.failed} failed to decode` : ""));
  const dropped = Object.entries(t.dropped).map(([why, n]) => `${why} ${n}`).join(", ");
  fact(list, "Dropped", dropped || "none");
  if (t.unusual) fact(list, "Unusual", `${t.unusual} tile${t.unusual === 1 ? "" : "s"} unlike the training images (not counted)`);
  fact(list, "Tile size", `${t.tile_size} px`);
  if (t.agreement !== null) fact(list, "Agreement", `${pct(t.agreement)} of used tiles call ${result.label}`);
}

function showViewer(result) {
  const base = $("slide-image");
  const thumb = result.thumbnail_jpeg_base64 ? "data:image/jpeg;base64," + result.thumbnail_jpeg_base64 : "";
  // The upload itself when the browser can show it (full detail when zoomed), else the
  // server's thumbnail (TIFF, DICOM, slides of the server's folder).
  base.onerror = () => { if (thumb && base.src !== thumb) base.src = thumb; };
  base.src = state.file && !state.slide ? $("preview").src : thumb;
  const overlay = $("slide-overlay");
  if (result.overlay_png_base64) overlay.src = "data:image/png;base64," + result.overlay_png_base64;
  else overlay.removeAttribute("src");
  overlay.hidden = !result.overlay_png_base64;
  $("legend-name").textContent = result.overlay_class ? `P(${result.overlay_class}) per tile` : "no tile classified";
  $("image-caption").textContent = `${result.image.name} · scroll or +/− to zoom, drag to pan; hover a tile for its probabilities`;
  setOpacity();
  state.view.width = result.image.width;
  state.view.height = result.image.height;
  const marks = $("marks");
  marks.replaceChildren(...(result.decisive || []).map((d, i) => {
    const box = document.createElement("div");
    box.className = "mark";
    const badge = document.createElement("span");
    badge.textContent = String(i + 1);
    box.append(badge);
    place(box, d);
    return box;
  }));
  requestAnimationFrame(fitView);
}

function place(element, tile) {
  const v = state.view;
  element.style.left = (100 * tile.x / v.width) + "%";
  element.style.top = (100 * tile.y / v.height) + "%";
  element.style.width = (100 * Math.min(tile.size, v.width - tile.x) / v.width) + "%";
  element.style.height = (100 * Math.min(tile.size, v.height - tile.y) / v.height) + "%";
}

function showDecisive(result) {
  const list = $("decisive");
  list.replaceChildren(...(result.decisive || []).map((d, i) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.title = `Tile ${i + 1} at (${d.x}, ${d.y}): zoom to it`;
    if (d.jpeg_base64) {
      const img = document.createElement("img");
      img.src = "data:image/jpeg;base64," + d.jpeg_base64;
      img.alt = `Tile ${i + 1}`;
      button.append(img);
    }
    const caption = document.createElement("span");
    caption.textContent = `${i + 1} · ${pct(d.probability)}`;
    button.append(caption);
    button.addEventListener("click", () => zoomTo(d));
    const mark = () => $("marks").children[i];
    ["mouseenter", "focus"].forEach((t) => button.addEventListener(t, () => mark().classList.add("active")));
    ["mouseleave", "blur"].forEach((t) => button.addEventListener(t, () => mark().classList.remove("active")));
    li.append(button);
    return li;
  }));
  if (!list.children.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "No tile was classified.";
    list.append(li);
  }
}

// ---- zoom and pan: one CSS transform on the stage (image, overlay and marks together) ----

function fitView() {
  const viewer = $("viewer");
  const v = state.view;
  const vw = viewer.clientWidth, vh = viewer.clientHeight;
  v.viewerWidth = vw;
  v.viewerHeight = vh;
  const fit = Math.min(vw / v.width, vh / v.height);
  const stage = $("stage");
  stage.style.width = v.width * fit + "px";
  stage.style.height = v.height * fit + "px";
  v.fit = fit;
  v.scale = 1;
  v.x = (vw - v.width * fit) / 2;
  v.y = (vh - v.height * fit) / 2;
  applyView();
}

function applyView() {
  const v = state.view;
  const stage = $("stage");
  stage.style.transform = `translate(${v.x}px, ${v.y}px) scale(${v.scale})`;
  stage.style.setProperty("--zoom", v.scale);  // badges and outlines keep their screen size
  $("zoom-level").textContent = Math.round(100 * v.scale * (v.fit || 1)) + " % of full size";
}

function zoomAt(factor, cx, cy) {
  const v = state.view;
  const scale = Math.min(64, Math.max(0.5, v.scale * factor));
  v.x = cx - (cx - v.x) * (scale / v.scale);
  v.y = cy - (cy - v.y) * (scale / v.scale);
  v.scale = scale;
  applyView();
}

function zoomCentre(factor) {
  const viewer = $("viewer");
  zoomAt(factor, viewer.clientWidth / 2, viewer.clientHeight / 2);
}

function zoomTo(tile) {
  const viewer = $("viewer");
  const v = state.view;
  const vw = viewer.clientWidth, vh = viewer.clientHeight;
  v.scale = Math.max(1, 0.8 * Math.min(vw, vh) / (tile.size * v.fit));
  const cx = (tile.x + tile.size / 2) * v.fit * v.scale;
  const cy = (tile.y + tile.size / 2) * v.fit * v.scale;
  v.x = vw / 2 - cx;
  v.y = vh / 2 - cy;
  applyView();
}

function tilesAt(event) {
  // Every tile over the point: the overlay shows the mean of the kept ones (tiles overlap
  // when the stride is smaller than the tile).
  const v = state.view;
  const rect = $("viewer").getBoundingClientRect();
  const px = (event.clientX - rect.left - v.x) / (v.scale * v.fit);
  const py = (event.clientY - rect.top - v.y) / (v.scale * v.fit);
  const tiles = (state.result && state.result.tiles) || [];
  return tiles.filter((t) => px >= t.x && py >= t.y && px < t.x + t.size && py < t.y + t.size);
}

function tipText(tiles) {
  const classes = Object.keys(state.result.probabilities || {});
  const kept = tiles.filter((t) => t.probs && !t.unusual);
  if (!kept.length && tiles.some((t) => t.unusual)) return "unlike the training images: not counted";
  if (!kept.length) {
    const why = [...new Set(tiles.map((t) => t.verdict + (t.detail ? ": " + t.detail : "")))];
    return `${tiles.length === 1 ? "tile" : tiles.length + " tiles"} here dropped (${why.join("; ")})`;
  }
  const mean = classes.map((_, k) => kept.reduce((a, t) => a + t.probs[k], 0) / kept.length);
  const best = mean.indexOf(Math.max(...mean));
  const where = kept.length === 1 ? `tile at (${kept[0].x}, ${kept[0].y})` : `${kept.length} tiles here (mean)`;
  let text = `${where}: ${classes[best]} ${pct(mean[best])}`;
  const shown = classes.indexOf(state.result.overlay_class);
  if (shown >= 0 && shown !== best) text += ` · ${classes[shown]} ${pct(mean[shown])}`;
  return text;
}

function showTip(event) {
  const tip = $("tile-tip");
  const tiles = state.view.dragging ? [] : tilesAt(event);
  if (!tiles.length) { tip.hidden = true; return; }
  tip.textContent = tipText(tiles);
  const rect = $("viewer").getBoundingClientRect();
  tip.style.left = Math.min(event.clientX - rect.left + 12, rect.width - 250) + "px";
  tip.style.top = Math.min(event.clientY - rect.top + 12, rect.height - 40) + "px";
  tip.hidden = false;
}

function setOpacity() {
  $("slide-overlay").style.opacity = $("overlay-opacity").value / 100;
}

function bindViewer() {
  const viewer = $("viewer");
  const v = state.view;
  viewer.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = viewer.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - rect.left, e.clientY - rect.top);
  }, { passive: false });
  viewer.addEventListener("pointerdown", (e) => {
    v.dragging = { x: e.clientX - v.x, y: e.clientY - v.y };
    viewer.setPointerCapture(e.pointerId);
    viewer.classList.add("dragging");
  });
  viewer.addEventListener("pointermove", (e) => {
    if (v.dragging) {
      v.x = e.clientX - v.dragging.x;
      v.y = e.clientY - v.dragging.y;
      applyView();
    }
    showTip(e);
  });
  const stop = () => { v.dragging = null; viewer.classList.remove("dragging"); };
  viewer.addEventListener("pointerup", stop);
  viewer.addEventListener("pointercancel", stop);
  viewer.addEventListener("pointerleave", () => { $("tile-tip").hidden = true; });
  viewer.addEventListener("dblclick", (e) => {
    const rect = viewer.getBoundingClientRect();
    zoomAt(2, e.clientX - rect.left, e.clientY - rect.top);
  });
  viewer.addEventListener("keydown", (e) => {
    const step = 60;
    const keys = { "+": () => zoomCentre(1.5), "=": () => zoomCentre(1.5), "-": () => zoomCentre(1 / 1.5),
                   "0": fitView, ArrowLeft: () => { v.x += step; }, ArrowRight: () => { v.x -= step; },
                   ArrowUp: () => { v.y += step; }, ArrowDown: () => { v.y -= step; } };
    if (!keys[e.key]) return;
    e.preventDefault();
    keys[e.key]();
    applyView();
  });
  $("zoom-in").addEventListener("click", () => zoomCentre(1.5));
  $("zoom-out").addEventListener("click", () => zoomCentre(1 / 1.5));
  $("zoom-fit").addEventListener("click", fitView);
  $("overlay-opacity").addEventListener("input", setOpacity);
  // Refit only when the viewer itself changed size (a resize event alone, e.g. a browser bar
  // showing, must not throw away the user's zoom).
  window.addEventListener("resize", () => {
    if ($("tiled-view").hidden) return;
    if (viewer.clientWidth !== v.viewerWidth || viewer.clientHeight !== v.viewerHeight) fitView();
  });
}

function showError(message) {
  $("result").hidden = true;
  $("error").hidden = false;
  $("error").textContent = message;
}

async function analyse() {
  if (!(state.file || state.slide) || !state.model) return;
  const query = `model=${encodeURIComponent(state.model)}&tiles=${encodeURIComponent($("tiles").value)}`;
  let request;
  if (state.slide) {
    request = api(`/api/slide?name=${encodeURIComponent(state.slide)}&${query}`, { method: "POST" });
  } else {
    const form = new FormData();
    form.append("file", state.file, "upload");
    request = api("/api/predict?" + query, { method: "POST", body: form });
  }
  $("placeholder").hidden = true;
  $("busy").hidden = false;
  try {
    showResult(await request);
  } catch (err) {
    showError(err.message);
  } finally {
    $("busy").hidden = true;
  }
}

function choose(file) {
  if (!file) return;
  state.file = file;
  state.slide = null;
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

async function listSlides() {
  const listing = await api("/api/slides");
  const picker = $("slide-picker");
  picker.replaceChildren(...listing.slides.map((s) =>
    new Option(`${s.name} (${(s.bytes / 2 ** 20).toFixed(1)} MB)`, s.name)));
  $("slide-go").disabled = !listing.slides.length;
  $("slides-note").textContent = !listing.slides.length ? "the folder holds no image or slide"
    : listing.truncated ? `the first ${listing.slides.length} shown` : "";
  $("slides-box").hidden = false;
}

function chooseSlide(name) {
  if (!name) return;
  state.slide = name;
  state.file = null;
  $("figure").hidden = true;
  analyse();
}

async function start() {
  try {
    const config = await api("/api/config");
    $("drop-hint").textContent = `PNG, JPEG, TIFF, BMP or DICOM · up to ${config.max_upload_mb} MB`;
    const listing = await api("/api/models");
    $("token-box").hidden = true;
    const picker = $("model-picker");
    picker.replaceChildren(...listing.models.map((m) => new Option(`${m.id} — ${m.name}`, m.id)));
    picker.value = listing.default;
    $("picker-wrap").hidden = listing.models.length < 2;
    if (config.slides) await listSlides();
    await selectModel(listing.default);
  } catch (err) {
    showError(err.message);
  }
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
$("tiles").addEventListener("change", analyse);
$("slides-box").addEventListener("submit", (e) => {
  e.preventDefault();
  chooseSlide($("slide-picker").value);
});
bindViewer();
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
