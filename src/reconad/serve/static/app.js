// The inspection page: send each chosen or dropped image to /v1/predict?map=png, show its heat-map overlay,
// its score against the threshold, the verdict and whether it is borderline, and keep a list of everything
// checked since the page opened. When the server keeps feedback, each result can be labelled good or defective
// (the same image goes to /v1/feedback); when it keeps a record, the record can be downloaded.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem("reconad-key") || "",
  entries: [],
  selected: null,
  feedback: false,
};

function headers() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

async function errorText(response) {
  try {
    return (await response.json()).error || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function askForKey(message) {
  for (const el of document.querySelectorAll(".key")) el.hidden = false;
  status(message, true);
  $("api-key").focus();
}

async function loadModel() {
  const response = await fetch("/v1/model", { headers: headers() });
  if (response.status === 401) {
    askForKey(`${await errorText(response)}: enter the server's API key above.`);
    return;
  }
  if (!response.ok) {
    $("model-info").textContent = `Cannot load the model: ${await errorText(response)}`;
    return;
  }
  const model = await response.json();
  const select = $("category");
  select.replaceChildren(...model.categories.map((name) => new Option(name, name)));
  select.disabled = model.categories.length < 2;
  const fitted = model.fitted_at ? `, fitted ${model.fitted_at.replace("T", " ")}` : "";
  $("model-info").textContent =
    `${model.model} on ${model.backbone} at ${model.image_size} px · ` +
    `${model.categories.length} ${model.categories.length === 1 ? "category" : "categories"}${fitted} · ` +
    `run ${model.run_id} · reconad ${model.reconad_version}`;
  const margin = model.borderline_margin;  // the meter puts score / threshold = 1 at mid-scale
  $("margin").textContent = `±${+(margin * 100).toFixed(2)} %`;
  $("meter-band").style.left = `${50 * (1 - margin)}%`;
  $("meter-band").style.width = `${100 * margin}%`;
  state.feedback = Boolean(model.feedback);
  $("record").hidden = !model.record;
  if (state.selected) show(state.selected);
  status("Ready: choose or drop images.");
}

async function check(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  if ($("category").value) form.append("category", $("category").value);
  const response = await fetch("/v1/predict?map=png", { method: "POST", body: form, headers: headers() });
  const entry = { file, name: file.name, url: URL.createObjectURL(file) };
  if (response.ok) {
    Object.assign(entry, (await response.json()).results[0]);
  } else {
    entry.error = await errorText(response);
    if (response.status === 401) askForKey(`${entry.error}: enter the server's API key above.`);
  }
  state.entries.unshift(entry);
  addToHistory(entry);
  show(entry);
  return entry;
}

async function checkAll(files) {
  const images = [...files];
  let failed = 0;
  for (const [i, file] of images.entries()) {
    status(`Checking ${file.name} (${i + 1} of ${images.length})…`);
    try {
      if ((await check(file)).error) failed += 1;
    } catch (err) {
      failed += 1;
      status(`Could not reach the server: ${err.message}`, true);
      return;
    }
  }
  const done = `Checked ${images.length} ${images.length === 1 ? "image" : "images"}`;
  status(failed ? `${done}; ${failed} could not be scored.` : `${done}.`, failed > 0);
}

function verdictOf(entry) {
  if (entry.error) return "error";
  return entry.is_anomalous ? "anomalous" : "normal";
}

function show(entry) {
  state.selected = entry;
  const verdict = verdictOf(entry);
  $("result").hidden = false;
  $("result-name").textContent = entry.name;
  $("verdict").textContent = verdict;
  $("verdict").className = `verdict ${verdict}`;
  $("borderline").hidden = !entry.borderline;
  $("original").src = entry.url;
  $("original").alt = `${entry.name} as uploaded`;
  if (entry.error) {
    $("score-text").textContent = entry.error;
    $("overlay").removeAttribute("src");
    $("overlay").alt = "";
    $("meter-fill").style.width = "0";
  } else {
    const ratio = entry.score / entry.threshold;
    $("score-text").textContent =
      `Score ${entry.score.toPrecision(4)} against threshold ${entry.threshold.toPrecision(4)} ` +
      `(${ratio.toFixed(3)}× the threshold; above it is anomalous) · category ${entry.category}`;
    $("overlay").src = `data:image/png;base64,${entry.overlay_png}`;
    $("overlay").alt = `Heat map of ${entry.name}`;
    $("meter-fill").style.width = `${Math.max(0, Math.min(ratio / 2, 1)) * 100}%`;
  }
  $("meter-fill").className = `meter-fill ${verdict}`;
  showFeedback(entry);
  for (const button of $("history").querySelectorAll("button")) {
    button.setAttribute("aria-current", String(button.entry === entry));
  }
}

function addToHistory(entry) {
  const button = document.createElement("button");
  button.type = "button";
  button.entry = entry;
  const thumb = document.createElement("img");
  thumb.src = entry.error ? entry.url : `data:image/png;base64,${entry.overlay_png}`;
  thumb.alt = "";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = entry.name;
  const badge = document.createElement("span");
  badge.className = "badges";
  for (const text of entry.borderline ? [verdictOf(entry), "borderline"] : [verdictOf(entry)]) {
    const one = document.createElement("span");
    one.className = `badge ${text}`;
    one.textContent = text;
    badge.append(one);
  }
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = entry.error ? "" : entry.score.toPrecision(4);
  button.append(thumb, name, badge, score);
  button.addEventListener("click", () => show(entry));
  const item = document.createElement("li");
  item.append(button);
  $("history").prepend(item);
  $("history-empty").hidden = true;
  const n = state.entries.length;
  const bad = state.entries.filter((e) => e.is_anomalous).length;
  $("count").textContent = `(${n}; ${bad} anomalous)`;
}

function showFeedback(entry) {
  $("feedback").hidden = !state.feedback || Boolean(entry.error);
  const done = entry.feedback;
  for (const button of $("feedback").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(done?.label === button.dataset.label));
  }
  $("feedback-status").textContent = done
    ? `Stored as ${done.label} (${done.stored}).`
    : entry.feedbackError ? `Not stored: ${entry.feedbackError}` : "";
  $("feedback-status").classList.toggle("error", !done && Boolean(entry.feedbackError));
}

async function sendFeedback(label) {
  const entry = state.selected;
  if (!entry || entry.error) return;
  const form = new FormData();
  form.append("file", entry.file, entry.file.name);
  form.append("label", label);
  form.append("category", entry.category);
  $("feedback-status").textContent = `Storing as ${label}…`;
  try {
    const response = await fetch("/v1/feedback", { method: "POST", body: form, headers: headers() });
    if (response.ok) {
      entry.feedback = await response.json();
      entry.feedbackError = null;
    } else {
      entry.feedback = null;
      entry.feedbackError = await errorText(response);
    }
  } catch (err) {
    entry.feedback = null;
    entry.feedbackError = `could not reach the server: ${err.message}`;
  }
  if (state.selected === entry) showFeedback(entry);
}

async function downloadRecord() {
  const response = await fetch("/v1/record", { headers: headers() });
  if (!response.ok) {
    status(`Cannot download the record: ${await errorText(response)}`, true);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = "record.csv";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function moveInHistory(event) {
  const buttons = [...$("history").querySelectorAll("button")];
  const at = buttons.indexOf(document.activeElement);
  if (at < 0) return;
  const to = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: buttons.length - 1 }[event.key];
  if (to === undefined) return;
  event.preventDefault();
  const target = buttons[Math.max(0, Math.min(to, buttons.length - 1))];
  target.focus();
  show(target.entry);
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) checkAll(event.target.files).finally(() => (event.target.value = ""));
  });
  $("file").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {  // browsers open a file picker on Space; Enter should too
      event.preventDefault();
      event.target.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) checkAll(event.dataTransfer.files);
  });
  // A file dropped beside the zone must not replace the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("history").addEventListener("keydown", moveInHistory);
  for (const button of $("feedback").querySelectorAll("button")) {
    button.addEventListener("click", () => sendFeedback(button.dataset.label));
  }
  $("record-download").addEventListener("click", () => downloadRecord().catch((err) => status(err.message, true)));
  $("api-key").addEventListener("change", (event) => {
    state.key = event.target.value.trim();
    sessionStorage.setItem("reconad-key", state.key);
    loadModel();
  });
  loadModel().catch((err) => status(`Could not reach the server: ${err.message}`, true));
}

setUp();
