// The page of `drsformer serve`: uploads photos as jobs, follows their progress by polling, shows a finished job
// before/after and offers its download. It talks only to the server it came from.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const local = [];  // uploads the server refused: {name, error}
let jobs = [];
let selected = null;
let polling = null;

function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["X-Token"] = token;
  return fetch(path, Object.assign({}, options, { headers }));
}

function withToken(path) {
  return token ? `${path}?token=${encodeURIComponent(token)}` : path;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `the server answered ${response.status}`;
}

async function loadModels() {
  const response = await api("/api/models");
  if (!response.ok) {
    local.push({ name: "this page", error: await errorOf(response) });
    render();
    return;
  }
  const info = await response.json();
  const model = $("model");
  for (const m of info.models) {
    const option = document.createElement("option");
    option.value = m.id;
    option.textContent = `${m.name} (${m.variant})`;
    model.appendChild(option);
  }
  const precision = $("precision");
  for (const p of info.precisions) {
    const option = document.createElement("option");
    option.value = p;
    option.textContent = p;
    option.selected = p === info.default_precision;
    precision.appendChild(option);
  }
  const mb = (info.max_bytes / 1048576).toFixed(0);
  const mp = (info.max_pixels / 1e6).toFixed(1);
  $("limits").textContent = `At most ${mb} MB and ${mp} million pixels a photo.`;
}

async function upload(file) {
  const params = new URLSearchParams({
    model: $("model").value,
    precision: $("precision").value,
    self_ensemble: $("ensemble").checked ? "true" : "false",
    name: file.name,
  });
  try {
    const response = await api(`/api/jobs?${params}`, { method: "POST", body: file });
    if (!response.ok) local.push({ name: file.name, error: await errorOf(response) });
  } catch (err) {
    local.push({ name: file.name, error: `upload failed: ${err.message}` });
  }
  await refresh();
}

function addFiles(files) {
  for (const file of files) upload(file);
}

async function refresh() {
  try {
    const response = await api("/api/jobs");
    if (response.ok) jobs = (await response.json()).jobs;
  } catch (_) { /* the server is gone: keep what we know */ }
  render();
  const active = jobs.some((j) => j.state === "queued" || j.state === "running");
  if (active && polling === null) polling = setInterval(refresh, 500);
  if (!active && polling !== null) {
    clearInterval(polling);
    polling = null;
  }
  if (!selected) {
    const done = jobs.filter((j) => j.state === "done");
    if (done.length) show(done[done.length - 1]);
  }
}

function stateText(job) {
  if (job.state === "queued") return "queued";
  if (job.state === "running") {
    return job.total ? `running: step ${job.done} of ${job.total}` : "running";
  }
  if (job.state === "done") return `done in ${job.seconds.toFixed(1)} s`;
  return job.state;
}

function render() {
  const list = $("jobs");
  const items = [];
  for (const entry of local) {
    const li = document.createElement("li");
    li.className = "job";
    li.innerHTML = '<span class="name"></span><span class="state">refused</span><span class="error"></span>';
    li.querySelector(".name").textContent = entry.name;
    li.querySelector(".error").textContent = entry.error;
    items.push(li);
  }
  for (const job of jobs.slice().reverse()) {
    const li = document.createElement("li");
    li.className = "job" + (selected && selected.id === job.id ? " selected" : "");
    li.dataset.job = job.id;
    li.dataset.state = job.state;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = `${job.name} (${job.width} x ${job.height})`;
    const actions = document.createElement("span");
    actions.className = "actions";
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = stateText(job);
    actions.appendChild(state);
    if (job.state === "queued" || job.state === "running") {
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.textContent = "Cancel";
      cancel.setAttribute("aria-label", `Cancel ${job.name}`);
      cancel.dataset.action = "cancel";
      cancel.addEventListener("click", () => api(`/api/jobs/${job.id}`, { method: "DELETE" }).then(refresh));
      actions.appendChild(cancel);
    }
    if (job.state === "done") {
      const view = document.createElement("button");
      view.type = "button";
      view.textContent = "View";
      view.setAttribute("aria-label", `View ${job.name}`);
      view.dataset.action = "view";
      view.addEventListener("click", () => show(job));
      actions.appendChild(view);
    }
    li.append(name, actions);
    if (job.state === "queued" || job.state === "running") {
      const bar = document.createElement("progress");
      bar.max = job.total || 1;
      bar.value = job.done;
      bar.setAttribute("aria-label", `${job.name}: ${stateText(job)}`);
      li.appendChild(bar);
    }
    if (job.error) {
      const error = document.createElement("span");
      error.className = "error";
      error.textContent = job.error;
      li.appendChild(error);
    }
    items.push(li);
  }
  // The list is rebuilt on every poll: keep the keyboard's focus on the same job's button (or the next one).
  const focused = document.activeElement;
  const had = focused && list.contains(focused) ? focused.closest("li").dataset.job : null;
  list.replaceChildren(...items);
  if (had) {
    const again = list.querySelector(`li[data-job="${had}"] button`) || list.querySelector("button");
    if (again) again.focus();
  }
  const counts = {};
  for (const job of jobs) counts[job.state] = (counts[job.state] || 0) + 1;
  $("summary").textContent = Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ");
}

function show(job) {
  selected = job;
  $("viewer").hidden = false;
  $("viewer-name").textContent = job.name;
  $("before").src = withToken(`/api/jobs/${job.id}/preview/input`);
  $("after").src = withToken(`/api/jobs/${job.id}/preview/result`);
  const download = $("download");
  download.href = withToken(`/api/jobs/${job.id}/result`);
  download.setAttribute("download", "");  // the name the server gives: the photo's, in its real format
  setSplit($("split").value);
  render();
}

function setSplit(value) {
  $("after-clip").style.clipPath = `inset(0 0 0 ${value}%)`;
}

function setup() {
  const drop = $("drop");
  const input = $("files");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  $("split").addEventListener("input", (event) => setSplit(event.target.value));
  $("zoom").addEventListener("click", () => {
    const frame = $("frame");
    const actual = frame.classList.toggle("actual");
    $("zoom").setAttribute("aria-pressed", String(actual));
    $("zoom").textContent = actual ? "Fit" : "1:1";
  });
  loadModels().then(refresh).then(() => { document.body.dataset.ready = "true"; });
}

setup();
