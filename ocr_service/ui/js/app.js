// The OCR web UI: submit documents, follow each task live, read pages beside their text.

import {
  ApiError,
  cancelTask,
  fetchBlobUrl,
  getJson,
  readEvents,
  storeKey,
  storedKey,
  submitFile,
  submitUrl,
} from "./api.js";
import { colourOf, renderMarkdown, segmentsOf } from "./render.js";

const PAGE_SEPARATOR = "\n<--- Page Split --->\n"; // what the service joins pages with
const STREAMS_AT_ONCE = 3; // browsers allow 6 connections per host; leave room for images
const POLL_MS = 2000; // tasks without a stream are polled
const MAX_BACKOFF_MS = 30000;
const REMEMBERED_TASKS = 30;
const BLOBS_PER_TASK = 40; // page images and figures kept in this browser per task
const TASKS_STORAGE = "ocr.tasks";
const PRESETS = [
  ["markdown", "Convert to Markdown, with layout"],
  ["free", "Free OCR (plain text)"],
  ["ocr", "Text lines with boxes"],
  ["figure", "Parse a figure"],
  ["describe", "Describe the image"],
  ["locate", "Locate text"],
  ["custom", "Custom prompt"],
];

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  tasks: [], // newest first
  selected: null,
  page: 1,
  boxes: true,
  view: "rendered",
  chosen: [],
  streams: 0,
  shown: "", // what the viewer's page panes show (re-rendered only when it changes)
};

// -- small helpers -------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

function duration(seconds) {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

let toastTimer = null;
function toast(message) {
  const box = $("toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (box.hidden = true), 5000);
}

function baseName(name) {
  const stem = (name || "result").split(/[\\/]/).pop().replace(/\.[^.]+$/, "");
  return stem.replace(/[^\w.-]+/g, "_").slice(0, 80) || "result";
}

// -- service info and the API key ----------------------------------------------------

async function loadInfo() {
  try {
    state.info = await getJson("info");
  } catch (err) {
    $("service-info").textContent = `service unreachable: ${err.message}`;
    return;
  }
  const info = state.info;
  const parts = [`engine ${info.engine}`];
  if (info.resolution_mode) parts.push(`${info.resolution_mode} mode`);
  parts.push(`v${info.version}`);
  $("service-info").textContent = parts.join(" · ");
  $("resolution-output").textContent = info.resolution_mode || "— (this engine has none)";
  $("max-tokens-input").value = info.default_max_tokens;
  $("max-tokens-input").max = info.max_tokens_limit;
  fillPresets(info);
  if (info.api_keys) {
    $("key-button").hidden = false;
    if (!storedKey()) askForKey("This service needs an API key.");
  }
}

function askForKey(message) {
  $("key-form").hidden = false;
  $("key-button").hidden = true;
  $("key-message").textContent = message || "";
  $("key-input").value = storedKey();
  $("key-input").focus();
}

function onKeySaved(event) {
  event.preventDefault();
  storeKey($("key-input").value.trim());
  $("key-form").hidden = true;
  $("key-button").hidden = !(state.info && state.info.api_keys);
  for (const task of state.tasks) if (task.needsKey) task.needsKey = false;
  toast(storedKey() ? "API key saved in this browser." : "API key removed.");
}

function onApiError(err) {
  if (err instanceof ApiError && err.status === 401) askForKey(err.message);
}

// -- the submit form -----------------------------------------------------------------

function fillPresets(info) {
  const select = $("preset-select");
  select.replaceChildren();
  let chosen = "custom";
  for (const [key, label] of PRESETS) {
    if (key !== "custom" && !info.prompts[key]) continue;
    select.append(el("option", { value: key }, label));
    if (info.prompts[key] === info.default_prompt && chosen === "custom") chosen = key;
  }
  select.value = chosen;
  $("prompt-input").value = info.default_prompt;
  onPresetChanged();
}

function onPresetChanged() {
  const key = $("preset-select").value;
  const info = state.info;
  $("locate-field").hidden = key !== "locate";
  $("prompt-field").hidden = key !== "custom";
  if (key !== "custom" && info) $("prompt-input").value = info.prompts[key];
  const hint = $("prompt-hint");
  if (info && info.engine === "rapidocr") {
    hint.textContent = "RapidOCR reads text lines and ignores the prompt.";
    hint.hidden = false;
  } else if (key === "custom") {
    hint.textContent = "DeepSeek prompts start with <image>; it is added if missing.";
    hint.hidden = false;
  } else {
    hint.hidden = true;
  }
}

function promptParams() {
  const key = $("preset-select").value;
  let prompt = key === "custom" ? $("prompt-input").value : state.info.prompts[key];
  if (key === "locate") {
    const text = $("locate-input").value.trim();
    if (!text) throw new Error("Type the text to locate.");
    prompt = prompt.replace("TEXT", text);
  }
  if (!prompt.trim()) throw new Error("The prompt is empty.");
  const maxTokens = Number($("max-tokens-input").value);
  if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > state.info.max_tokens_limit) {
    throw new Error(`Max tokens must be a whole number from 1 to ${state.info.max_tokens_limit}.`);
  }
  return { prompt, maxTokens };
}

function addFiles(files) {
  for (const file of files) state.chosen.push(file);
  renderChosen();
}

function renderChosen() {
  const list = $("chosen-files");
  list.replaceChildren(
    ...state.chosen.map((file, index) =>
      el(
        "li",
        {},
        el("span", { class: "file-name" }, file.name),
        el("span", { class: "file-size" }, `${(file.size / 1024).toFixed(0)} KB`),
        el("button", {
          type: "button",
          class: "icon",
          "aria-label": `Remove ${file.name}`,
          onclick: () => {
            state.chosen.splice(index, 1);
            renderChosen();
          },
        }, "×"),
      ),
    ),
  );
}

async function onSubmit(event) {
  event.preventDefault();
  const message = $("submit-message");
  message.textContent = "";
  if (!state.info) {
    message.textContent = "The service is not reachable.";
    return;
  }
  const address = $("url-input").value.trim();
  if (!state.chosen.length && !address) {
    message.textContent = "Choose or drop a file, or paste a URL.";
    return;
  }
  let params;
  try {
    params = promptParams();
  } catch (err) {
    message.textContent = err.message;
    return;
  }
  const files = state.chosen.splice(0);
  renderChosen();
  $("url-input").value = "";
  const jobs = files.map((file) => [file.name, () => submitFile(file, params), file]);
  if (address) jobs.push([address, () => submitUrl(address, params), null]);
  for (const [name, send, file] of jobs) {
    const task = newTask(null, name);
    task.status = "uploading";
    renderTasks();
    try {
      const accepted = await send();
      task.id = accepted.task_id;
      task.status = accepted.status;
      remember();
      follow(task);
      if (!state.selected || state.selected === task) select(task);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        // Nothing was submitted: keep the document for another try once the key is right.
        state.tasks = state.tasks.filter((t) => t !== task);
        if (file) state.chosen.push(file);
        else $("url-input").value = name;
        renderChosen();
      } else {
        task.status = "rejected";
        task.error = err.message + (err.retryAfter ? ` (retry in ${err.retryAfter} s)` : "");
        task.ended = true;
      }
      onApiError(err);
    }
    renderTasks();
  }
}

// -- tasks ---------------------------------------------------------------------------

function newTask(id, name) {
  const task = {
    id,
    name,
    status: "pending",
    pagesDone: 0,
    pagesTotal: 0,
    queuePosition: null,
    estimatedWait: null,
    error: null,
    message: null,
    warnings: [],
    pages: new Map(),
    lastEventId: 0,
    final: null,
    ended: false,
    removed: false,
    retryMs: 1000,
    failures: 0,
    blobs: new Map(),
    abort: new AbortController(),
  };
  state.tasks.unshift(task);
  return task;
}

function remember() {
  const kept = state.tasks.filter((t) => t.id && !t.removed && t.status !== "expired").slice(0, REMEMBERED_TASKS);
  window.localStorage.setItem(TASKS_STORAGE, JSON.stringify(kept.map((t) => ({ id: t.id, name: t.name }))));
}

function restore() {
  let saved = [];
  try {
    saved = JSON.parse(window.localStorage.getItem(TASKS_STORAGE) || "[]");
  } catch {
    saved = [];
  }
  for (const { id, name } of saved.reverse()) {
    if (typeof id !== "string") continue;
    follow(newTask(id, String(name || id)));
  }
  renderTasks();
}

// Follow a task to its end: by its event stream while a stream slot is free, else by polling.
// A stream that ends early (the server closes streams after a while) is resumed from the last
// page received; errors back off up to MAX_BACKOFF_MS.
async function follow(task) {
  while (!task.ended && !task.removed) {
    let delay = POLL_MS;
    if (state.streams < STREAMS_AT_ONCE) {
      state.streams += 1;
      try {
        const retry = await readEvents(task.id, task.lastEventId, (event) => onEvent(task, event), task.abort.signal);
        if (retry) task.retryMs = retry;
        followed(task);
      } catch (err) {
        followFailed(task, err);
      } finally {
        state.streams -= 1;
      }
      delay = task.retryMs;
    } else {
      try {
        const view = await getJson(`ocr/${encodeURIComponent(task.id)}`);
        applyProgress(task, view.status, view.progress, view.queue_position, view.estimated_wait_s);
        if (["completed", "failed", "cancelled"].includes(view.status)) finish(task, view);
        followed(task);
      } catch (err) {
        followFailed(task, err);
      }
      changed();
    }
    if (!task.ended && !task.removed) await sleep(Math.min(MAX_BACKOFF_MS, delay * 2 ** task.failures));
  }
}

function followed(task) {
  task.failures = 0;
  task.message = null;
}

function followFailed(task, err) {
  if (err.name === "AbortError") return;
  task.failures = Math.min(task.failures + 1, 10);
  if (err instanceof ApiError && err.status === 404) {
    task.status = "expired";
    task.error = err.message;
    task.ended = true;
    remember();
  } else if (err instanceof ApiError && err.status === 401) {
    task.message = "needs a valid API key";
    onApiError(err);
  } else {
    task.message = `connection lost (${err.message}); retrying`;
  }
  changed();
}

function onEvent(task, event) {
  const data = event.data;
  if (event.event === "progress") {
    applyProgress(task, data.status, data, data.queue_position, data.estimated_wait_s);
  } else if (event.event === "page") {
    task.pages.set(data.page, data);
    task.lastEventId = Number(event.id) || task.lastEventId;
  } else if (["done", "failed", "cancelled"].includes(event.event)) {
    finish(task, data);
  }
  changed();
}

function applyProgress(task, status, progress, queuePosition, estimatedWait) {
  task.status = status;
  task.pagesDone = progress.pages_done;
  task.pagesTotal = progress.pages_total;
  task.queuePosition = queuePosition ?? null;
  task.estimatedWait = estimatedWait ?? null;
}

function finish(task, view) {
  applyProgress(task, view.status, view.progress, null, null);
  task.error = view.error || null;
  task.warnings = view.warnings || [];
  for (const page of view.pages || []) task.pages.set(page.page, page);
  task.final = view;
  task.ended = true;
}

async function onCancel(task) {
  try {
    const view = await cancelTask(task.id);
    applyProgress(task, view.status, view.progress, null, null);
    task.message = null;
  } catch (err) {
    task.message = `cannot cancel: ${err.message}`;
    toast(task.message);
    onApiError(err);
  }
  changed();
}

function removeTask(task) {
  task.removed = true;
  task.abort.abort();
  for (const pending of task.blobs.values()) pending.then((blobUrl) => URL.revokeObjectURL(blobUrl), () => {});
  state.tasks = state.tasks.filter((t) => t !== task);
  if (state.selected === task) state.selected = null;
  remember();
  renderTasks();
  renderViewer();
}

function select(task) {
  if (state.selected !== task) state.page = 1;
  state.selected = task;
  renderTasks();
  renderViewer();
}

let renderQueued = false;
function changed() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderTasks();
    if (state.selected && !state.selected.removed) renderViewer();
  });
}

// -- the task list -------------------------------------------------------------------

function statusLine(task) {
  switch (task.status) {
    case "uploading":
      return "uploading…";
    case "pending":
      if (task.queuePosition === null) return task.pagesTotal ? "waiting" : "fetching the document…";
      return (
        (task.queuePosition ? `waiting · ${plural(task.queuePosition, "page")} ahead` : "waiting · next in line") +
        (task.estimatedWait !== null ? ` · about ${duration(task.estimatedWait)}` : "")
      );
    case "processing":
      return `reading · ${task.pagesDone} of ${plural(task.pagesTotal, "page")} done`;
    case "completed": {
      const truncated = [...task.pages.values()].filter((p) => p.truncated).length;
      return plural(task.pagesTotal, "page") + (truncated ? ` · ${truncated} truncated` : "");
    }
    case "failed":
    case "rejected":
    case "expired":
      return task.error || task.status;
    case "cancelled":
      return "cancelled";
    default:
      return task.status;
  }
}

function renderTasks() {
  const list = $("task-list");
  $("no-tasks").hidden = state.tasks.length > 0;
  list.replaceChildren(
    ...state.tasks.map((task) => {
      const cancellable = task.id && (task.status === "pending" || task.status === "processing");
      const progress = task.pagesTotal ? el("progress", { max: task.pagesTotal, value: task.pagesDone }) : null;
      return el(
        "li",
        {
          class: `task-card status-${task.status}${state.selected === task ? " selected" : ""}`,
          dataset: { taskId: task.id || "" },
        },
        el(
          "button",
          { type: "button", class: "task-open", onclick: () => task.id && select(task), "aria-label": `Show ${task.name}` },
          el("span", { class: "task-name" }, task.name),
          el("span", { class: `badge ${task.status}` }, task.status),
          el("span", { class: "task-status" }, statusLine(task)),
          progress,
          task.message ? el("span", { class: "task-message" }, task.message) : null,
        ),
        el(
          "div",
          { class: "task-actions" },
          cancellable ? el("button", { type: "button", class: "cancel", onclick: () => onCancel(task) }, "Cancel") : null,
          task.ended || !task.id
            ? el("button", { type: "button", class: "icon", "aria-label": `Forget ${task.name}`, onclick: () => removeTask(task) }, "×")
            : null,
        ),
      );
    }),
  );
}

// -- the viewer ----------------------------------------------------------------------

function renderViewer() {
  const task = state.selected;
  $("viewer-empty").hidden = Boolean(task);
  $("viewer-body").hidden = !task;
  if (!task) {
    state.shown = "";
    return;
  }
  const total = task.pagesTotal;
  state.page = Math.min(Math.max(1, state.page), Math.max(1, total));
  $("viewer-title").textContent = task.name;
  const status = $("viewer-status");
  status.textContent = statusLine(task);
  status.className = `status ${task.status}`;
  $("page-count").textContent = String(total);
  const input = $("page-input");
  input.max = String(Math.max(1, total));
  if (document.activeElement !== input) input.value = String(state.page);
  $("prev-page").disabled = state.page <= 1;
  $("next-page").disabled = state.page >= total;
  const anyText = task.pages.size > 0;
  for (const id of ["download-md", "download-json", "copy-md"]) $(id).disabled = !anyText;
  renderStrip(task);
  const page = task.pages.get(state.page) || null;
  renderBanner(task, page);
  const key = `${task.id}|${state.page}|${page ? "done" : "none"}|${state.view}|${total}`;
  if (key !== state.shown) {
    state.shown = key;
    renderPage(task, page);
  }
  $("page-boxes").classList.toggle("off", !state.boxes);
}

function renderStrip(task) {
  const strip = $("page-strip");
  strip.hidden = task.pagesTotal <= 1;
  if (strip.hidden) return;
  const chips = [];
  for (let n = 1; n <= task.pagesTotal; n += 1) {
    const page = task.pages.get(n);
    const kind = page ? (page.truncated ? "truncated" : "done") : task.ended ? "missing" : "waiting";
    chips.push(
      el(
        "button",
        {
          type: "button",
          class: `chip ${kind}${n === state.page ? " current" : ""}`,
          "aria-label": `Page ${n} (${kind})`,
          "aria-current": n === state.page ? "page" : null,
          onclick: () => goTo(n),
        },
        String(n),
      ),
    );
  }
  strip.replaceChildren(...chips);
}

function renderBanner(task, page) {
  const lines = [];
  let kind = "info";
  if (page) {
    if (page.truncated) kind = "warning";
    lines.push(...(page.warnings || []).map((warning) => `Page ${page.page}: ${warning}`));
    if (page.truncated && !lines.length) {
      lines.push(`Page ${page.page} stopped at max tokens: its text is incomplete, usually because the model repeated itself.`);
    }
  } else if (task.status === "failed") {
    kind = "error";
    lines.push(`Page ${state.page} was not read: the task failed. ${task.error || ""}`);
  } else if (task.status === "cancelled") {
    lines.push(`Page ${state.page} was not read: the task was cancelled.`);
  } else if (task.status === "expired") {
    kind = "error";
    lines.push(task.error || "This task has expired on the server.");
  } else if (task.pagesTotal) {
    lines.push(task.status === "processing" ? `Reading page ${state.page}…` : "Waiting in the queue…");
  } else if (!task.ended) {
    lines.push("Waiting for the document…");
  }
  const banner = $("page-banner");
  banner.hidden = !lines.length;
  banner.replaceChildren(...lines.map((line) => el("p", {}, line)));
  banner.className = `banner ${kind}`;
}

function renderPage(task, page) {
  const image = $("page-image");
  const boxes = $("page-boxes");
  const message = $("page-image-message");
  const text = $("page-text");
  const raw = $("page-raw");
  boxes.replaceChildren();
  $("legend").replaceChildren();
  text.replaceChildren();
  raw.textContent = "";
  message.hidden = true;
  image.removeAttribute("src");
  image.alt = "";
  $("page-figure").hidden = !task.pagesTotal;
  if (task.pagesTotal && task.status !== "expired") loadPageImage(task, state.page);
  text.hidden = state.view !== "rendered";
  raw.hidden = state.view !== "raw";
  if (!page) {
    text.append(el("p", { class: "empty" }, task.ended ? "No text for this page." : "The text appears here when this page is read."));
    return;
  }
  raw.textContent = page.markdown;
  const segments = page.blocks.length ? segmentsOf(page) : [{ label: "text", text: page.markdown, figure: null, blocks: [] }];
  drawBoxes(page, segments);
  segments.forEach((segment, index) => {
    const kind = `segment label-${segment.label.replace(/[^\w-]/g, "")}${segment.paragraph ? " paragraph" : ""}`;
    const holder = el("div", { class: kind, dataset: { seg: String(index) } });
    holder.style.setProperty("--label-colour", colourOf(segment.label));
    if (segment.figure) {
      const img = el("img", { class: "figure", alt: `Figure ${segment.figure}` });
      holder.append(img);
      loadFigure(task, segment.figure, img);
    } else {
      holder.append(renderMarkdown(segment.text, (name, img) => loadFigure(task, name, img)));
    }
    if (segment.blocks.length) {
      holder.addEventListener("mouseenter", () => highlight(index, "text"));
      holder.addEventListener("mouseleave", () => highlight(null));
    }
    text.append(holder);
  });
}

function drawBoxes(page, segments) {
  const svg = $("page-boxes");
  svg.setAttribute("viewBox", `0 0 ${page.width} ${page.height}`);
  const labels = new Set();
  const ns = "http://www.w3.org/2000/svg";
  segments.forEach((segment, index) => {
    for (const blockIndex of segment.blocks) {
      const block = page.blocks[blockIndex];
      const [x1, y1, x2, y2] = block.bbox;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", x1);
      rect.setAttribute("y", y1);
      rect.setAttribute("width", Math.max(1, x2 - x1));
      rect.setAttribute("height", Math.max(1, y2 - y1));
      rect.setAttribute("stroke", colourOf(block.label));
      rect.setAttribute("fill", colourOf(block.label));
      rect.setAttribute("vector-effect", "non-scaling-stroke");
      rect.setAttribute("class", "box");
      rect.dataset.seg = String(index);
      const title = document.createElementNS(ns, "title");
      title.textContent = block.label;
      rect.append(title);
      rect.addEventListener("mouseenter", () => highlight(index, "page"));
      rect.addEventListener("mouseleave", () => highlight(null));
      svg.append(rect);
      labels.add(block.label);
    }
  });
  $("legend").replaceChildren(
    ...[...labels].map((label) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colourOf(label);
      return el("li", {}, swatch, label);
    }),
  );
}

function highlight(index, from) {
  for (const node of document.querySelectorAll(".hl")) node.classList.remove("hl");
  if (index === null) return;
  const rects = document.querySelectorAll(`#page-boxes rect[data-seg="${index}"]`);
  const segment = document.querySelector(`#page-text .segment[data-seg="${index}"]`);
  for (const rect of rects) rect.classList.add("hl");
  if (segment) segment.classList.add("hl");
  if (from === "page" && segment) segment.scrollIntoView({ block: "nearest", behavior: "smooth" });
  if (from === "text" && rects[0]) rects[0].scrollIntoView({ block: "nearest", behavior: "smooth" });
}

// Images of a task, fetched once each; the least recently used beyond BLOBS_PER_TASK are let go.
async function loadBlob(task, path) {
  let pending = task.blobs.get(path);
  if (pending) {
    task.blobs.delete(path); // re-inserted below: most recently used last
  } else {
    pending = fetchBlobUrl(path);
  }
  task.blobs.set(path, pending);
  while (task.blobs.size > BLOBS_PER_TASK) {
    const [oldest, stale] = task.blobs.entries().next().value;
    task.blobs.delete(oldest);
    stale.then((blobUrl) => URL.revokeObjectURL(blobUrl), () => {});
  }
  try {
    return await pending;
  } catch (err) {
    if (task.blobs.get(path) === pending) task.blobs.delete(path); // try again next time
    throw err;
  }
}

async function loadPageImage(task, number) {
  const image = $("page-image");
  const message = $("page-image-message");
  try {
    const blobUrl = await loadBlob(task, `ocr/${encodeURIComponent(task.id)}/pages/${number}/image`);
    if (state.selected !== task || state.page !== number) return;
    image.src = blobUrl;
    image.alt = `Page ${number} of ${task.name}`;
  } catch (err) {
    if (state.selected !== task || state.page !== number) return;
    $("page-figure").hidden = true;
    message.hidden = false;
    message.textContent = `No page image: ${err.message}`;
    onApiError(err);
  }
}

async function loadFigure(task, name, img) {
  try {
    img.src = await loadBlob(task, `ocr/${encodeURIComponent(task.id)}/${name}`);
  } catch (err) {
    img.replaceWith(el("span", { class: "figure-missing" }, `[figure ${name}: ${err.message}]`));
  }
}

function goTo(number) {
  const task = state.selected;
  if (!task) return;
  state.page = Math.min(Math.max(1, number), Math.max(1, task.pagesTotal));
  renderViewer();
}

// -- results out ---------------------------------------------------------------------

function orderedPages(task) {
  return [...task.pages.values()].sort((a, b) => a.page - b.page);
}

function taskMarkdown(task) {
  if (task.final && typeof task.final.result === "string") return task.final.result;
  return orderedPages(task).map((page) => page.markdown).join(PAGE_SEPARATOR);
}

function taskJson(task) {
  const body = task.final || {
    task_id: task.id,
    status: task.status,
    progress: { pages_done: task.pagesDone, pages_total: task.pagesTotal },
    pages: orderedPages(task),
  };
  return JSON.stringify(body, null, 2);
}

function download(text, name, type) {
  const blobUrl = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: blobUrl, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(blobUrl), 10000);
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Not a secure context (plain http on a LAN address): the old way.
    const area = el("textarea", { class: "offscreen", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast("Markdown copied.");
}

// -- wiring --------------------------------------------------------------------------

function setView(view) {
  state.view = view;
  $("view-rendered").setAttribute("aria-pressed", String(view === "rendered"));
  $("view-raw").setAttribute("aria-pressed", String(view === "raw"));
  renderViewer();
}

function wire() {
  $("key-button").addEventListener("click", () => askForKey(""));
  $("key-form").addEventListener("submit", onKeySaved);
  $("submit-form").addEventListener("submit", onSubmit);
  $("preset-select").addEventListener("change", onPresetChanged);
  $("file-input").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  const zone = $("dropzone");
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file-input").click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles(event.dataTransfer.files);
  });
  $("prev-page").addEventListener("click", () => goTo(state.page - 1));
  $("next-page").addEventListener("click", () => goTo(state.page + 1));
  $("page-input").addEventListener("change", (event) => goTo(Number(event.target.value) || 1));
  $("boxes-toggle").addEventListener("change", (event) => {
    state.boxes = event.target.checked;
    renderViewer();
  });
  $("view-rendered").addEventListener("click", () => setView("rendered"));
  $("view-raw").addEventListener("click", () => setView("raw"));
  $("download-md").addEventListener("click", () => {
    const task = state.selected;
    if (task) download(taskMarkdown(task), `${baseName(task.name)}.md`, "text/markdown");
  });
  $("download-json").addEventListener("click", () => {
    const task = state.selected;
    if (task) download(taskJson(task), `${baseName(task.name)}.json`, "application/json");
  });
  $("copy-md").addEventListener("click", () => state.selected && copyText(taskMarkdown(state.selected)));
  document.addEventListener("keydown", (event) => {
    if (!state.selected || event.target.closest("input, textarea, select")) return;
    if (event.key === "ArrowLeft") goTo(state.page - 1);
    if (event.key === "ArrowRight") goTo(state.page + 1);
  });
}

wire();
await loadInfo();
restore();
