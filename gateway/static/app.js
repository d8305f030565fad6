// The page's logic: submit a job, follow it, draw progress, the trajectory and the images.
// Plain JavaScript against the public API (POST /generate/{model}, GET/DELETE /jobs/{id}, /models/info).
// A job is followed through its server-sent events (GET /jobs/{id}/events), read with fetch so the API
// key header goes along (EventSource cannot send one); where the stream fails the page polls instead.
"use strict";

const CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
const RECENT_KEY = "genservice.recent";
const APIKEY_KEY = "genservice.apiKey";
const RECENT_MAX = 20;
const POLL_MS = 400;
const STREAM_RECONNECTS = 3;  // a dropped event stream is resumed (Last-Event-ID) this often, then the page polls
const FINAL = ["finished", "failed", "canceled"];

const $ = (id) => document.getElementById(id);
const state = { job: null, timer: null, stream: null, shownPreviews: 0, shownResults: false, defaults: {} };

// ---- API -------------------------------------------------------------------------------------

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = localStorage.getItem(APIKEY_KEY);
  if (key) h["X-API-Key"] = key;
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "content-type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const error = new Error(describeError(response.status, data));
    error.status = response.status;
    throw error;
  }
  return data;
}

function describeError(status, data) {
  const detail = data && data.detail;
  if (Array.isArray(detail)) {  // FastAPI's 422: [{loc, msg}, ...]
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${d.msg}`).join("; ");
  }
  if (typeof detail === "string") return detail;
  return `the service answered ${status}`;
}

// A path on this origin, whatever host the gateway wrote into its absolute URLs.
function local(url) {
  try { const u = new URL(url, location.href); return u.pathname + u.search; } catch (e) { return url; }
}

// With an API key the PNG routes need a header, which <img src> cannot send: fetch into a blob URL.
async function showImage(img, url) {
  if (!localStorage.getItem(APIKEY_KEY)) { img.src = local(url); return local(url); }
  const response = await fetch(local(url), { headers: headers() });
  if (!response.ok) throw new Error(`image ${response.status}`);
  const blobUrl = URL.createObjectURL(await response.blob());
  img.src = blobUrl;
  return blobUrl;
}

// ---- the form --------------------------------------------------------------------------------

function model() { return document.querySelector("input[name=model]:checked").value; }

function applyModel() {
  const m = model();
  document.body.dataset.model = m;
  const steps = $("steps");
  if (m === "diffusion") {
    steps.max = 1000;
    const ddpm = $("sampler").value === "ddpm";
    const wasDdpm = steps.disabled;
    steps.disabled = ddpm;
    if (ddpm) steps.value = 1000;
    else if (wasDdpm || !steps.value || +steps.value > 1000 || steps.dataset.model !== m) {
      steps.value = state.defaults.diffusionSteps || 20;
    }
  } else {
    steps.max = 2000;
    steps.disabled = false;
    if (steps.dataset.model !== m) steps.value = state.defaults.ebmSteps || 200;
  }
  steps.dataset.model = m;
}

// The diffusion card's recommended sampling (models/README.md) is the form's default until the user edits it.
function applyRecommended(sampling) {
  state.defaults.diffusionSteps = sampling.steps;
  if (sampling.sampler) $("sampler").value = sampling.sampler;
  if (sampling.guidance_scale != null) $("guidance").value = sampling.guidance_scale;
  const interval = sampling.guidance_interval || ["", ""];
  $("guidance-lo").value = interval[0];
  $("guidance-hi").value = interval[1];
  if (model() === "diffusion" && $("sampler").value !== "ddpm") $("steps").value = sampling.steps;
  applyModel();
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function request() {
  const body = { num_images: number("num-images"), previews: number("previews") ?? 0 };
  const label = $("class-label").value;
  if (label !== "") body.class_label = label;
  const seed = number("seed");
  if (seed !== null) body.seed = seed;
  if (model() === "diffusion") {
    body.sampler = $("sampler").value;
    body.steps = number("steps");
    body.guidance_scale = number("guidance") ?? 1;
    if (body.sampler !== "dpmpp_2m") body.eta = number("eta") ?? 0;  // DPM-Solver++ is deterministic
    const lo = number("guidance-lo"), hi = number("guidance-hi");
    if (lo !== null || hi !== null) body.guidance_interval = [lo ?? 0, hi ?? 1e6];  // the API says what is wrong
  } else {
    const fields = [["steps", "steps"], ["step-size", "step_size"], ["noise-scale", "noise_scale"], ["ebm-guidance", "guidance_scale"]];
    for (const [id, field] of fields) {
      const v = number(id);
      if (v !== null) body[field] = v;
    }
  }
  return body;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function submit(event) {
  event.preventDefault();
  showError("");
  const m = model();
  const body = request();
  $("submit").disabled = true;
  try {
    const accepted = await api("POST", `generate/${m}`, body);
    remember({ id: accepted.job_id, model: m, params: body, created: Date.now(), status: "queued" });
    openJob(accepted.job_id, m);
  } catch (error) {
    showError(error.message);
  } finally {
    $("submit").disabled = false;
  }
}

function fillForm(model_, params) {
  document.querySelector(`input[name=model][value=${model_}]`).checked = true;
  $("class-label").value = params.class_label === undefined || params.class_label === null
    ? "" : (typeof params.class_label === "number" ? CLASSES[params.class_label] : params.class_label);
  $("num-images").value = params.num_images;
  $("seed").value = params.seed ?? "";
  $("previews").value = params.previews ?? 0;
  if (model_ === "diffusion") {
    $("sampler").value = params.sampler || (params.steps === 1000 ? "ddpm" : "ddim");
    $("guidance").value = params.guidance_scale ?? 1;
    $("eta").value = params.eta ?? 0;
    $("guidance-lo").value = params.guidance_interval ? params.guidance_interval[0] : "";
    $("guidance-hi").value = params.guidance_interval ? params.guidance_interval[1] : "";
  } else {
    $("step-size").value = params.step_size ?? "";
    $("noise-scale").value = params.noise_scale ?? "";
    $("ebm-guidance").value = params.guidance_scale ?? "";
  }
  $("steps").dataset.model = model_;
  applyModel();
  $("steps").value = params.steps ?? $("steps").value;
  $("form-card").scrollIntoView({ behavior: "smooth" });
}

// ---- one job ---------------------------------------------------------------------------------

function openJob(id, model_) {
  clearTimeout(state.timer);
  if (state.stream) state.stream.abort();
  state.job = { id, model: model_, params: null };
  state.shownPreviews = 0;
  state.shownResults = false;
  $("job-card").hidden = false;
  $("job-id").textContent = id.slice(0, 8);
  $("job-id").title = id;
  $("job-error").hidden = true;
  $("trajectory").replaceChildren();
  $("results").replaceChildren();
  $("trajectory-block").hidden = true;
  $("results-block").hidden = true;
  $("progress").value = 0;
  $("progress-text").textContent = "waiting";
  $("queue-position").textContent = "";
  $("cancel").disabled = false;
  follow(state.job);
}

// One server-sent event ("id: ...\nevent: ...\ndata: ...") as an object; null for comments.
function parseEvent(block) {
  const event = {};
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const cut = line.indexOf(":");
    const name = cut < 0 ? line : line.slice(0, cut);
    event[name] = cut < 0 ? "" : line.slice(cut + 1).replace(/^ /, "");
  }
  return event.data === undefined ? null : event;
}

async function follow(job) {
  const controller = new AbortController();
  state.stream = controller;
  let lastId = null;
  try {
    for (let attempt = 0; attempt <= STREAM_RECONNECTS; attempt++) {
      try {
        const response = await fetch(`jobs/${job.id}/events`,
          { headers: headers(lastId ? { "Last-Event-ID": lastId } : {}), signal: controller.signal });
        if (!response.ok || !response.body) break;  // e.g. 429: too many streams; poll instead
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;  // dropped: resume after the last event seen
          buffer += value.replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = parseEvent(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
            if (!event || state.job !== job) continue;
            if (event.id) lastId = event.id;
            if (event.event === "gone") { controller.abort(); poll(); return; }  // the poll shows "expired"
            const status = JSON.parse(event.data);
            render(status);
            if (event.event === "end" || FINAL.includes(status.status)) { controller.abort(); return; }
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
      }
      if (state.job !== job) return;
    }
  } finally {
    if (state.stream === controller) state.stream = null;
  }
  if (state.job === job) poll();
}

async function poll() {
  const job = state.job;
  if (!job) return;
  let status;
  try {
    status = await api("GET", `jobs/${job.id}`);
  } catch (error) {
    if (state.job !== job) return;
    if (error.status === 404) {
      render({ job_id: job.id, model: job.model, status: "expired", parameters: {}, previews: [] });
      updateRecent(job.id, { status: "expired" });
      return;
    }
    $("job-error").textContent = error.message;
    $("job-error").hidden = false;
    state.timer = setTimeout(poll, POLL_MS * 5);
    return;
  }
  if (state.job !== job) return;  // another job was opened meanwhile
  render(status);
  if (!FINAL.includes(status.status)) state.timer = setTimeout(poll, POLL_MS);
}

function render(status) {
  const job = state.job;
  job.params = status.parameters;
  job.model = status.model || job.model;
  $("job-status").textContent = status.status;
  $("job-status").className = `pill ${status.status}`;
  $("job-summary").textContent = summary(job.model, status.parameters);
  $("job-seed").textContent = status.parameters.seed ?? "—";
  const p = status.progress;
  if (p) {
    $("progress").value = p.fraction;
    $("progress-text").textContent = `step ${p.step} / ${p.total}`;
  } else {
    $("progress-text").textContent = status.status === "queued" ? "waiting for a worker" : status.status;
  }
  $("queue-position").textContent = status.status === "queued" && status.queue_position !== null
    && status.queue_position !== undefined
    ? (status.queue_position === 0 ? "next in line" : `${status.queue_position} job(s) ahead in the queue`) : "";
  $("cancel").disabled = FINAL.includes(status.status) || status.status === "expired";
  if (status.error) {
    $("job-error").textContent = status.error;
    $("job-error").hidden = false;
  }
  renderPreviews(status.previews || []);
  if (status.status === "finished" && status.results && !state.shownResults) renderResults(status);
  updateRecent(status.job_id, { status: status.status, seed: status.parameters.seed });
}

function renderPreviews(previews) {
  if (previews.length === 0) return;
  $("trajectory-block").hidden = false;
  for (const preview of previews.slice(state.shownPreviews)) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.alt = `step ${preview.step}`;
    const caption = document.createElement("figcaption");
    caption.textContent = `step ${preview.step}`;
    figure.append(img, caption);
    $("trajectory").append(figure);
    showImage(img, preview.url).catch(() => figure.remove());
  }
  state.shownPreviews = previews.length;
}

function renderResults(status) {
  state.shownResults = true;
  $("results-block").hidden = false;
  const seed = status.parameters.seed;
  status.results.images.forEach((url, k) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.alt = `image ${k} (seed ${seed + k})`;
    img.title = `seed ${seed + k}`;
    const link = document.createElement("a");
    link.textContent = "download";
    link.download = `${status.model}-${seed + k}.png`;
    figure.append(img, link);
    $("results").append(figure);
    showImage(img, url).then((href) => { link.href = href; }).catch(() => { link.textContent = "expired"; });
  });
  const grid = $("grid-link");
  grid.download = `${status.model}-${seed}-grid.png`;
  showImage(new Image(), status.results.grid).then((href) => { grid.href = href; }).catch(() => {});
}

function summary(model_, params) {
  if (!params || params.num_images === undefined) return model_ || "";
  const label = params.class_label === null || params.class_label === undefined ? "any class"
    : (typeof params.class_label === "number" ? CLASSES[params.class_label] : params.class_label);
  const steps = params.steps ? `${params.steps} steps` : "model's steps";
  const sampler = model_ === "diffusion" ? ` ${params.sampler || (params.steps === 1000 ? "ddpm" : "ddim")}` : " langevin";
  return `${model_}${sampler}, ${params.num_images} × ${label}, ${steps}`;
}

async function cancel() {
  if (!state.job) return;
  $("cancel").disabled = true;
  try {
    const answer = await api("DELETE", `jobs/${state.job.id}`);
    $("job-status").textContent = answer.status;
    if (!state.stream) {  // the event stream, when open, brings the change itself
      clearTimeout(state.timer);
      poll();
    }
  } catch (error) {
    $("job-error").textContent = error.message;
    $("job-error").hidden = false;
  }
}

// ---- recent jobs (localStorage) --------------------------------------------------------------

function recent() {
  try { return JSON.parse(localStorage.getItem(RECENT_KEY)) || []; } catch (e) { return []; }
}

function saveRecent(list) {
  localStorage.setItem(RECENT_KEY, JSON.stringify(list.slice(0, RECENT_MAX)));
  renderRecent();
}

function remember(entry) { saveRecent([entry, ...recent().filter((e) => e.id !== entry.id)]); }

function updateRecent(id, changes) {
  const list = recent();
  const entry = list.find((e) => e.id === id);
  if (!entry) return;
  if (Object.keys(changes).every((k) => changes[k] === undefined || entry[k] === changes[k])) return;
  Object.assign(entry, changes);
  if (changes.seed !== undefined) entry.params.seed = changes.seed;
  saveRecent(list);
}

function renderRecent() {
  const list = recent();
  $("recent-empty").hidden = list.length > 0;
  $("recent").replaceChildren(...list.map((entry) => {
    const item = document.createElement("li");
    item.dataset.jobId = entry.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = summary(entry.model, entry.params);
    open.addEventListener("click", () => openJob(entry.id, entry.model));
    const meta = document.createElement("span");
    meta.className = "muted";
    const when = new Date(entry.created).toLocaleString();
    meta.textContent = ` seed ${entry.params.seed ?? "?"} · ${when} · `;
    const pill = document.createElement("span");
    pill.className = `pill ${entry.status}`;
    pill.textContent = entry.status;
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.className = "link";
    reuse.textContent = "reuse";
    reuse.addEventListener("click", () => fillForm(entry.model, entry.params));
    item.append(open, meta, pill, " ", reuse);
    return item;
  }));
}

// ---- the service -----------------------------------------------------------------------------

async function loadModels() {
  try {
    const info = await api("GET", "models/info");
    const diffusion = (info.models.diffusion || [])[0];
    if (diffusion && diffusion.sampling && !state.touched) applyRecommended(diffusion.sampling);
    const ebm = (info.models.ebm || [])[0];
    if (ebm && ebm.sampling) {
      state.defaults.ebmSteps = ebm.sampling.steps;
      $("step-size").placeholder = `model's: ${ebm.sampling.step_size}`;
      $("noise-scale").placeholder = `model's: ${ebm.sampling.noise_scale}`;
      $("ebm-guidance").placeholder = `model's: ${ebm.sampling.guidance_scale ?? 1}`;
      if (model() === "ebm" && !$("steps").value) $("steps").value = ebm.sampling.steps;
    }
    const parts = Object.entries(info.queues).map(([name, q]) =>
      `${name}: ${q.workers} worker${q.workers === 1 ? "" : "s"}, ${q.queued} queued`);
    $("service").textContent = parts.join(" · ");
    $("service").className = Object.values(info.queues).every((q) => q.workers > 0) ? "service ok" : "service warn";
  } catch (error) {
    $("service").textContent = `service: ${error.message}`;
    $("service").className = "service warn";
  }
}

function init() {
  for (const name of CLASSES) $("class-label").append(new Option(name, name));
  $("api-key").value = localStorage.getItem(APIKEY_KEY) || "";
  $("api-key").addEventListener("change", () => {
    const key = $("api-key").value.trim();
    if (key) localStorage.setItem(APIKEY_KEY, key); else localStorage.removeItem(APIKEY_KEY);
  });
  for (const radio of document.querySelectorAll("input[name=model]")) radio.addEventListener("change", applyModel);
  $("sampler").addEventListener("change", applyModel);
  $("job-form").addEventListener("submit", submit);
  $("job-form").addEventListener("input", () => { state.touched = true; });
  $("cancel").addEventListener("click", cancel);
  $("reuse").addEventListener("click", () => state.job && state.job.params && fillForm(state.job.model, state.job.params));
  $("clear-recent").addEventListener("click", () => saveRecent([]));
  applyModel();
  renderRecent();
  loadModels();
  setInterval(loadModels, 15000);
}

init();
