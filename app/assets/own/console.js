// The filegate web console: a client of filegate's public HTTP API and of nothing else
// (docs/console.md). Names are hostile input: they reach the page only as text nodes.
"use strict";

const API = new URL("../", location.href); // the console lives at <base>/console/
const TUS_ENDPOINT = new URL("files/tus", API).href;
const KEY_STORE = "filegate.key"; // sessionStorage: this tab only, never a URL or a cookie
const PAGE_SIZE = 100; // rows drawn at a time
const LIST_PAGE = 1000; // files asked for per listing request
const MAX_LISTED = 100000; // a folder larger than this is shown in part (and says so)
const CHUNK = 8 * 1024 * 1024; // tus PATCH size
const PARALLEL_UPLOADS = 3;
const PREVIEW_FETCH_MAX = 16 * 1024 * 1024; // a preview fetched with the key, into memory
const TEXT_PREVIEW = 64 * 1024;

const $ = (id) => document.getElementById(id);

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const number = new Intl.NumberFormat("en");
function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${number.format(n)} B`;
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const plural = (n, one, many) => `${number.format(n)} ${n === 1 ? one : many}`;
// An id in a URL path: each segment percent-encoded (names may hold ?, #, % or spaces).
const idPath = (id) => id.split("/").map(encodeURIComponent).join("/");

// --- The API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail, code) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

function keyHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? {"X-API-Key": key} : {};
}

async function errorOf(response) {
  let detail = `${response.status} ${response.statusText}`.trim();
  let code = null;
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
    code = body.code || null;
  } catch {
    // not JSON: the status line is all there is
  }
  return new ApiError(response.status, detail, code);
}

async function call(path, {method = "GET", json, headers = {}, raw = false} = {}) {
  const init = {method, headers: {...keyHeaders(), ...headers}};
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(new URL(path, API), init);
  } catch (error) {
    throw new ApiError(0, `filegate cannot be reached (${error.message}).`, "network");
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) askForKey(error.message);
    throw error;
  }
  return raw ? response : response.json();
}

// --- Messages --------------------------------------------------------------------------------

function showError(error) {
  const text = error instanceof ApiError || error instanceof Error ? error.message : String(error);
  $("error-text").textContent = text;
  $("error").hidden = false;
}
$("error-close").addEventListener("click", () => {
  $("error").hidden = true;
});
window.addEventListener("unhandledrejection", (event) => showError(event.reason));
window.addEventListener("error", (event) => showError(event.message));

function closeOnButtons(dialog) {
  for (const button of dialog.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => dialog.close());
  }
}
document.querySelectorAll("dialog").forEach(closeOnButtons);

// --- State -----------------------------------------------------------------------------------

const state = {
  access: null,
  root: null, // {prefix, backend, bucket}
  prefix: null, // the folder shown, in file-id form
  files: [],
  folders: [],
  complete: false,
  loading: 0, // a token: a newer load makes older ones stop
  sort: {by: "name", dir: 1},
  filter: "",
  page: 0,
  selected: new Map(), // file_id -> listed file
};

const can = (scope) => Boolean(state.access && state.access.key.scopes.includes(scope));

function applyScopes() {
  const write = can("write") && state.access.tus;
  const del = can("delete");
  document.querySelectorAll(".needs-write").forEach((el) => {
    el.hidden = !write;
  });
  document.querySelectorAll(".needs-delete").forEach((el) => {
    el.hidden = !del;
  });
  document.body.classList.toggle("read-only", !write);
}

// --- Key and access --------------------------------------------------------------------------

let keyWaiters = [];
function askForKey(message) {
  const dialog = $("key-dialog");
  $("key-error").textContent = sessionStorage.getItem(KEY_STORE) ? message : "";
  if (!dialog.open) dialog.showModal();
  return new Promise((resolve) => keyWaiters.push(resolve));
}
$("key-dialog").addEventListener("cancel", (event) => event.preventDefault()); // a key is needed
$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  try {
    await start();
    $("key-input").value = "";
    $("key-dialog").close();
    keyWaiters.forEach((resolve) => resolve());
    keyWaiters = [];
  } catch (error) {
    $("key-error").textContent = error.message;
  }
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  location.reload();
});

async function start() {
  const access = await call("access");
  state.access = access;
  $("who").textContent = access.open
    ? "No API keys: open to everyone"
    : `Key “${access.key.name}”: ${access.key.scopes.join(", ")}`;
  $("forget").hidden = access.open;
  $("warning").hidden = !access.warning;
  $("warning").textContent = access.warning || "";
  const select = $("root");
  select.replaceChildren(
    ...access.roots.map((root) => h("option", {value: root.prefix}, `${root.prefix} (${root.backend})`)),
  );
  applyScopes();
  if (!access.roots.length) {
    showError("This key may not list any folder here (or the storage cannot list: FastDFS).");
    return;
  }
  await route();
  showUnfinished();
}

// --- Browsing --------------------------------------------------------------------------------

function rootOf(prefix) {
  const roots = state.access.roots.filter((root) => prefix.startsWith(root.prefix));
  roots.sort((a, b) => b.prefix.length - a.prefix.length);
  return roots[0] || null;
}

async function route() {
  let prefix = decodeURIComponent(location.hash.slice(1));
  if (!prefix || !rootOf(prefix)) prefix = state.access.roots[0].prefix;
  if (!prefix.endsWith("/")) prefix += "/";
  await load(prefix);
}
window.addEventListener("hashchange", () => state.access && route().catch(showError));

function go(prefix) {
  location.hash = encodeURIComponent(prefix);
}
$("root").addEventListener("change", (event) => go(event.target.value));

async function load(prefix) {
  const token = ++state.loading;
  state.root = rootOf(prefix);
  state.prefix = prefix;
  state.files = [];
  state.folders = [];
  state.complete = false;
  state.page = 0;
  state.selected.clear();
  $("root").value = state.root.prefix;
  drawCrumbs();
  draw();
  summarize(prefix, token);
  let cursor = null;
  let drawn = 0;
  try {
    do {
      const query = new URLSearchParams({prefix, delimiter: "/", limit: String(LIST_PAGE)});
      if (cursor) query.set("cursor", cursor);
      const page = await call(`files?${query}`);
      if (token !== state.loading) return;
      state.files.push(...page.files);
      state.folders.push(...page.folders);
      cursor = page.next_cursor;
      if (performance.now() - drawn > 500) {  // the first page at once, then twice a second
        draw();
        drawn = performance.now();
      }
    } while (cursor && state.files.length < MAX_LISTED);
  } finally {
    if (token === state.loading) {
      state.complete = !cursor;
      draw();
    }
  }
}

async function summarize(prefix, token) {
  $("summary").textContent = "Counting…";
  try {
    const summary = await call(`files/summary?${new URLSearchParams({prefix})}`);
    if (token !== state.loading) return;
    const more = summary.complete === false ? " (at least)" : "";
    $("summary").textContent =
      `${plural(summary.file_count, "file", "files")}${more}, ${bytes(summary.total_size)} ` +
      "in this folder and its subfolders";
  } catch (error) {
    if (token === state.loading) $("summary").textContent = "";
    if (error.status !== 401) showError(error);
  }
}

function relative(prefix) {
  return prefix.slice(state.root.prefix.length);
}

function drawCrumbs() {
  const crumbs = [{label: state.root.prefix, prefix: state.root.prefix}];
  let at = state.root.prefix;
  for (const part of relative(state.prefix).split("/").filter(Boolean)) {
    at += `${part}/`;
    crumbs.push({label: part, prefix: at});
  }
  $("crumbs").replaceChildren(
    ...crumbs.map((crumb, i) =>
      h(
        "li",
        {},
        i === crumbs.length - 1
          ? h("span", {"aria-current": "page"}, crumb.label)
          : h("a", {href: `#${encodeURIComponent(crumb.prefix)}`}, crumb.label),
      ),
    ),
  );
}

const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
function folderName(prefix) {
  return prefix.slice(state.prefix.length).replace(/\/$/, "");
}

// The folder's rows, filtered and sorted: kept until the listing, the sort or the filter changes
// (a page turn or a checkbox redraws without sorting 50,000 names again).
let viewCache = {key: null, rows: []};
function view() {
  const key = [state.loading, state.files.length, state.folders.length, state.sort.by, state.sort.dir, state.filter].join("\u0000");
  if (viewCache.key !== key) viewCache = {key, rows: sortedRows()};
  return viewCache.rows;
}

const time = (file) => (file.time ??= Date.parse(file.last_modify_time));

function sortedRows() {
  const filter = state.filter.toLocaleLowerCase();
  const keep = (name) => !filter || name.toLocaleLowerCase().startsWith(filter);
  const folders = state.folders
    .map((prefix) => ({folder: true, prefix, name: folderName(prefix)}))
    .filter((row) => keep(row.name))
    .sort((a, b) => collator.compare(a.name, b.name) * (state.sort.by === "name" ? state.sort.dir : 1));
  const {by, dir} = state.sort;
  const key = {
    name: (a, b) => collator.compare(a.file_name, b.file_name),
    size: (a, b) => a.file_size - b.file_size,
    date: (a, b) => time(a) - time(b),
  }[by];
  const files = state.files
    .filter((file) => keep(file.file_name))
    .sort((a, b) => key(a, b) * dir || collator.compare(a.file_name, b.file_name));
  return [...folders, ...files];
}

function draw() {
  const rows = view();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const first = state.page * PAGE_SIZE;
  const shown = rows.slice(first, first + PAGE_SIZE);
  $("rows").replaceChildren(...shown.map((row) => (row.folder ? folderRow(row) : fileRow(row))));
  const loading = state.complete ? "" : " (loading…)";
  const capped = state.complete || state.files.length < MAX_LISTED ? "" : ` (the first ${number.format(MAX_LISTED)} only)`;
  $("page-info").textContent = rows.length
    ? `Rows ${number.format(first + 1)}–${number.format(first + shown.length)} of ${number.format(rows.length)}${loading}${capped}`
    : loading;
  $("caption").textContent = `Files and folders in ${state.prefix}`;
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= pages - 1;
  const empty = state.complete && !rows.length;
  $("empty").hidden = !empty;
  $("empty").textContent = state.filter
    ? "No file or folder here starts with that."
    : "This folder is empty. Uploads go into the folder shown.";
  for (const th of document.querySelectorAll("th[data-sort]")) {
    const sorted = th.dataset.sort === state.sort.by;
    if (sorted) th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
  const onPage = shown.filter((row) => !row.folder);
  const all = $("select-all");
  all.checked = onPage.length > 0 && onPage.every((file) => state.selected.has(file.file_id));
  all.disabled = onPage.length === 0;
  drawSelection();
  const relativeFolder = relative(state.prefix);
  $("zip-folder").disabled = state.complete && !rows.length;
  $("delete-folder").disabled = !relativeFolder;
}

function folderRow(row) {
  return h(
    "tr",
    {class: "folder"},
    h("td", {class: "check"}),
    h(
      "td",
      {class: "name"},
      h("button", {type: "button", class: "link", onclick: () => go(row.prefix)},
        h("span", {class: "icon", "aria-hidden": "true"}), `${row.name}/`),
    ),
    h("td", {class: "num"}, "folder"),
    h("td", {class: "date"}),
  );
}

function fileRow(file) {
  const box = h("input", {
    type: "checkbox",
    checked: state.selected.has(file.file_id),
    "aria-label": `Select ${file.file_name}`,
    onchange: (event) => {
      if (event.target.checked) state.selected.set(file.file_id, file);
      else state.selected.delete(file.file_id);
      draw();
    },
  });
  return h(
    "tr",
    {},
    h("td", {class: "check"}, box),
    h(
      "td",
      {class: "name"},
      h("button", {type: "button", class: "link", onclick: () => openDetails(file.file_id)}, file.file_name),
    ),
    h("td", {class: "num"}, bytes(file.file_size)),
    h("td", {class: "date"}, when(file.last_modify_time)),
  );
}

function drawSelection() {
  const n = state.selected.size;
  $("selection").hidden = n === 0;
  let total = 0;
  for (const file of state.selected.values()) total += file.file_size;
  $("selected-count").textContent = `${plural(n, "file", "files")} selected, ${bytes(total)}`;
}

$("select-all").addEventListener("change", (event) => {
  const rows = view().slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
  for (const row of rows) {
    if (row.folder) continue;
    if (event.target.checked) state.selected.set(row.file_id, row);
    else state.selected.delete(row.file_id);
  }
  draw();
});
$("clear-selection").addEventListener("click", () => {
  state.selected.clear();
  draw();
});
for (const button of document.querySelectorAll("th button[data-sort]")) {
  button.addEventListener("click", () => {
    const by = button.dataset.sort;
    state.sort = {by, dir: state.sort.by === by ? -state.sort.dir : 1};
    state.page = 0;
    draw();
  });
}
$("filter").addEventListener("input", (event) => {
  state.filter = event.target.value;
  state.page = 0;
  draw();
});
$("prev").addEventListener("click", () => {
  state.page -= 1;
  draw();
  $("main").focus();
});
$("next").addEventListener("click", () => {
  state.page += 1;
  draw();
  $("main").focus();
});

// --- Downloads -------------------------------------------------------------------------------

function save(url, name) {
  const a = h("a", {href: url, download: name || ""});
  document.body.append(a);
  a.click();
  a.remove();
}

async function saveResponse(response, name) {
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  save(url, name);
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function signedLink(fileId, {expiresIn, inline = false}) {
  return call(`files/${idPath(fileId)}/link`, {
    method: "POST",
    json: {expires_in: expiresIn, inline},
  });
}

// One file: straight from the API when no key is needed; through a short signed link when one
// is (the browser then streams it to disk); fetched with the key otherwise.
async function download(fileId, name) {
  if (state.access.open) return save(new URL(`files/${idPath(fileId)}/download`, API).href, name);
  if (state.access.links) return save((await signedLink(fileId, {expiresIn: 300})).url, name);
  const response = await call(`files/${idPath(fileId)}/download`, {raw: true});
  return saveResponse(response, name);
}

$("zip-selected").addEventListener("click", async () => {
  const entries = [...state.selected.keys()].map((file_id) => ({file_id}));
  try {
    const response = await call("files/download-zip", {method: "POST", json: entries, raw: true});
    await saveResponse(response, "files.zip");
  } catch (error) {
    showError(error);
  }
});

$("zip-folder").addEventListener("click", async () => {
  const path = `files/download-zip?${new URLSearchParams({prefix: state.prefix})}`;
  const name = `${folderName(state.prefix) || relative(state.prefix).replace(/\/$/, "").split("/").pop() || state.root.bucket}.zip`;
  try {
    if (state.access.open) return save(new URL(path, API).href, name);
    await saveResponse(await call(path, {raw: true}), name);
  } catch (error) {
    showError(error);
  }
});

// --- Details, preview, share -----------------------------------------------------------------

let current = null; // the FileInfo in the details dialog
let previewUrl = null;

function fact(term, ...value) {
  return [h("dt", {}, term), h("dd", {}, ...value)];
}

async function openDetails(fileId) {
  let info;
  try {
    info = await call(`files/${idPath(fileId)}/info`);
  } catch (error) {
    return showError(error);
  }
  current = info;
  $("details-title").textContent = info.file_name;
  const metadata = Object.entries(info.metadata || {});
  $("facts").replaceChildren(
    ...fact("Size", `${bytes(info.file_size)} (${number.format(info.file_size)} bytes)`),
    ...fact("Type", info.content_type),
    ...fact("Modified", when(info.last_modify_time)),
    ...fact("File id", h("code", {}, info.file_id)),
    ...fact("Backend", info.backend),
    ...fact("ETag", h("code", {}, info.etag)),
    ...fact("CRC-32", info.crc32 ? h("code", {}, info.crc32) : "not recorded"),
    ...(info.storage_class ? fact("Storage class", info.storage_class) : []),
    ...fact(
      "Metadata",
      metadata.length
        ? h("ul", {class: "meta"}, ...metadata.map(([k, v]) => h("li", {}, h("code", {}, k), " = ", v)))
        : "none",
    ),
  );
  $("d-share").hidden = !state.access.links;
  $("share-form").hidden = true;
  $("share-result").hidden = true;
  $("preview").replaceChildren();
  const dialog = $("details");
  if (!dialog.open) dialog.showModal();
  preview(info).catch((error) => {
    $("preview").replaceChildren(h("p", {class: "note"}, `No preview: ${error.message}`));
  });
}

$("details").addEventListener("close", () => {
  $("preview").replaceChildren();
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
});

function previewKind(type) {
  if (/^image\/(png|jpeg|gif|webp|avif|bmp)$/.test(type)) return "image";
  if (type.startsWith("text/") || /^application\/(json|xml|x-ndjson)/.test(type)) return "text";
  if (type === "application/pdf") return "pdf";
  if (type.startsWith("audio/")) return "audio";
  if (type.startsWith("video/")) return "video";
  return null;
}

async function mediaUrl(info) {
  if (state.access.open) {
    return new URL(`files/${idPath(info.file_id)}/download?inline=true`, API).href;
  }
  if (state.access.links) return (await signedLink(info.file_id, {expiresIn: 3600, inline: true})).url;
  if (info.file_size > PREVIEW_FETCH_MAX) throw new Error("too large to fetch without signed links");
  const response = await call(`files/${idPath(info.file_id)}/download`, {raw: true});
  previewUrl = URL.createObjectURL(await response.blob());
  return previewUrl;
}

async function preview(info) {
  const kind = previewKind(info.content_type.split(";")[0].trim().toLowerCase());
  const box = $("preview");
  if (!kind) return;
  if (kind === "text") {
    const response = await call(`files/${idPath(info.file_id)}/download`, {
      raw: true,
      headers: {Range: `bytes=0-${TEXT_PREVIEW - 1}`},
    });
    const text = new TextDecoder("utf-8", {fatal: false}).decode(await response.arrayBuffer());
    const cut = info.file_size > TEXT_PREVIEW ? `\n… (the first ${bytes(TEXT_PREVIEW)} of ${bytes(info.file_size)})` : "";
    box.replaceChildren(h("pre", {tabindex: "0", "aria-label": "Text preview"}, text + cut));
    return;
  }
  if (kind === "pdf") {
    // Only on request: the PDF viewer takes the keyboard focus when it loads.
    const show = h("button", {type: "button", onclick: async () => {
      const frame = h("iframe", {src: await mediaUrl(info), title: `Preview of ${info.file_name}`});
      if (current === info) box.replaceChildren(frame);
    }}, "Show the PDF here");
    box.replaceChildren(show);
    return;
  }
  const url = await mediaUrl(info);
  if (current !== info) return;
  const label = `Preview of ${info.file_name}`;
  const element = {
    image: () => h("img", {src: url, alt: label}),
    audio: () => h("audio", {src: url, controls: true, "aria-label": label}),
    video: () => h("video", {src: url, controls: true, "aria-label": label}),
  }[kind]();
  box.replaceChildren(element);
}

$("d-download").addEventListener("click", () =>
  download(current.file_id, current.file_name).catch(showError),
);
$("d-delete").addEventListener("click", async () => {
  const info = current;
  const ok = await confirmAction(
    "Delete this file?",
    `${info.file_name} (${bytes(info.file_size)}) will be deleted. This cannot be undone.`,
    "Delete",
  );
  if (!ok) return;
  try {
    await call(`files/${idPath(info.file_id)}`, {method: "DELETE"});
    $("details").close();
    await load(state.prefix);
  } catch (error) {
    showError(error);
  }
});
$("d-copy").addEventListener("click", () => {
  $("details").close();
  openCopy([current]);
});

const EXPIRIES = [
  [15 * 60, "15 minutes"],
  [3600, "1 hour"],
  [24 * 3600, "1 day"],
  [7 * 24 * 3600, "7 days"],
  [30 * 24 * 3600, "30 days"],
];
$("d-share").addEventListener("click", () => {
  const max = state.access.link_max_expires;
  const choices = EXPIRIES.filter(([seconds]) => seconds <= max);
  if (!choices.length) choices.push([max, `${number.format(max)} seconds`]);
  $("share-expiry").replaceChildren(...choices.map(([s, label]) => h("option", {value: String(s)}, label)));
  $("share-expiry").value = String(choices.find(([s]) => s === 24 * 3600)?.[0] || choices[0][0]);
  $("share-form").hidden = false;
  $("share-result").hidden = true;
  $("share-expiry").focus();
});
$("share-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const link = await signedLink(current.file_id, {expiresIn: Number($("share-expiry").value)});
    $("share-url").value = link.url;
    $("share-note").textContent = `Valid until ${when(link.expires_at)}. Anyone with the link can download the file.`;
    $("share-result").hidden = false;
    $("share-url").select();
  } catch (error) {
    showError(error);
  }
});
$("share-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("share-url").value);
    $("share-note").textContent = "Copied.";
  } catch {
    $("share-url").select();
    $("share-note").textContent = "Select the link and copy it (the clipboard was refused).";
  }
});

// --- Confirm, ask ----------------------------------------------------------------------------

// Shows a modal form; resolves true when it is submitted, false when it is closed otherwise.
function answered(dialog, form) {
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    const onSubmit = (event) => {
      event.preventDefault();
      dialog.returnValue = "ok";
      dialog.close();
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener(
      "close",
      () => {
        form.removeEventListener("submit", onSubmit);
        resolve(dialog.returnValue === "ok");
      },
      {once: true},
    );
  });
}

function confirmAction(title, text, verb) {
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = verb;
  const answer = answered($("confirm"), $("confirm-form"));
  $("confirm-ok").focus();
  return answer;
}

async function ask(title, label) {
  $("ask-title").textContent = title;
  $("ask-label").textContent = label;
  $("ask-input").value = "";
  return (await answered($("ask"), $("ask-form"))) ? $("ask-input").value.trim() : null;
}

// --- Delete ----------------------------------------------------------------------------------

$("delete-selected").addEventListener("click", async () => {
  const files = [...state.selected.values()];
  const total = files.reduce((sum, file) => sum + file.file_size, 0);
  const ok = await confirmAction(
    `Delete ${plural(files.length, "file", "files")}?`,
    `${plural(files.length, "file", "files")}, ${bytes(total)} in all, will be deleted. This cannot be undone.`,
    `Delete ${plural(files.length, "file", "files")}`,
  );
  if (!ok) return;
  try {
    const problems = [];
    for (let i = 0; i < files.length; i += 1000) {
      const file_ids = files.slice(i, i + 1000).map((file) => file.file_id);
      const result = await call("files/batch-delete", {method: "POST", json: {file_ids}});
      problems.push(...result.errors);
    }
    if (problems.length) {
      showError(`${plural(problems.length, "file was", "files were")} not deleted: ${problems[0].detail}`);
    }
  } catch (error) {
    showError(error);
  }
  await load(state.prefix);
});

$("delete-folder").addEventListener("click", async () => {
  const prefix = state.prefix;
  try {
    const [dry, summary] = await Promise.all([
      call("files/delete-prefix", {method: "POST", json: {prefix, dry_run: true}}),
      call(`files/summary?${new URLSearchParams({prefix})}`),
    ]);
    const ok = await confirmAction(
      "Delete this folder?",
      `${prefix} holds ${plural(dry.file_count, "file", "files")}, ${bytes(summary.total_size)} in all. ` +
        "Every one of them will be deleted. This cannot be undone.",
      `Delete ${plural(dry.file_count, "file", "files")}`,
    );
    if (!ok) return;
    await call("files/delete-prefix", {method: "POST", json: {prefix, dry_run: false}});
    const parent = prefix.slice(0, prefix.slice(0, -1).lastIndexOf("/") + 1);
    go(parent.length >= state.root.prefix.length ? parent : state.root.prefix);
  } catch (error) {
    showError(error);
  }
});

$("new-folder").addEventListener("click", async () => {
  const name = await ask("New folder", "Folder name (it exists once a file is uploaded into it)");
  if (!name) return;
  const clean = name.replace(/^\/+|\/+$/g, "");
  if (!clean) return;
  go(`${state.prefix}${clean}/`);
});

// --- Copy and move ---------------------------------------------------------------------------

let copying = [];
function openCopy(files) {
  copying = files;
  const backends = state.access.backends.filter((b) => b !== "fastdfs" || state.access.backends.length === 1);
  $("copy-backend").replaceChildren(...backends.map((b) => h("option", {value: b}, b)));
  $("copy-backend").value = state.root.backend;
  fillBuckets();
  $("copy-folder").value = relative(state.prefix).replace(/\/$/, "") || folderOfKey(state.root.prefix);
  $("copy-what").textContent = files.length === 1
    ? files[0].file_name
    : `${plural(files.length, "file", "files")}, ${bytes(files.reduce((s, f) => s + f.file_size, 0))}`;
  $("copy-progress").textContent = "";
  document.querySelector("input[name=copy-mode][value=copy]").checked = true;
  syncCopyVerb();
  $("copy-dialog").showModal();
}
function folderOfKey(prefix) {
  return prefix.split("/").slice(1).join("/").replace(/\/$/, "");
}
function fillBuckets() {
  const backend = $("copy-backend").value;
  const buckets = [...new Set(state.access.roots.filter((r) => r.backend === backend).map((r) => r.bucket))];
  $("copy-bucket").replaceChildren(...buckets.map((b) => h("option", {value: b}, b)));
  $("copy-bucket").disabled = buckets.length < 2;
}
function syncCopyVerb() {
  const move = document.querySelector("input[name=copy-mode]:checked").value === "move";
  $("copy-ok").textContent = move ? "Move" : "Copy";
}
$("copy-backend").addEventListener("change", fillBuckets);
document.querySelectorAll("input[name=copy-mode]").forEach((el) => el.addEventListener("change", syncCopyVerb));
$("copy-selected").addEventListener("click", () => openCopy([...state.selected.values()]));
$("copy-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const move = document.querySelector("input[name=copy-mode]:checked").value === "move";
  const body = {
    backend: $("copy-backend").value,
    folder: $("copy-folder").value.trim().replace(/^\/+|\/+$/g, ""),
    delete_source: move,
  };
  if ($("copy-bucket").value) body.bucket = $("copy-bucket").value;
  $("copy-ok").disabled = true;
  let done = 0;
  try {
    for (const file of copying) {
      $("copy-progress").textContent = `${move ? "Moving" : "Copying"} ${number.format(done + 1)} of ${number.format(copying.length)}…`;
      await call(`files/${idPath(file.file_id)}/copy`, {method: "POST", json: body});
      done += 1;
    }
    $("copy-dialog").close();
  } catch (error) {
    $("copy-progress").textContent = `${number.format(done)} done; stopped: ${error.message}`;
    showError(error);
  } finally {
    $("copy-ok").disabled = false;
    if (done) await load(state.prefix);
  }
});

// --- Uploads (tus) ---------------------------------------------------------------------------

const uploads = [];
let running = 0;

function metadataText() {
  const metadata = {};
  for (const line of $("meta").value.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`Metadata line “${line}” is not name=value.`);
    metadata[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return Object.keys(metadata).length ? JSON.stringify(metadata) : null;
}

function fingerprint(file) {
  return ["tus-br", file.name, file.type, file.size, file.lastModified, TUS_ENDPOINT].join("-");
}

function addFiles(entries) {
  // entries: [{file, dir}] with dir the folder below the current one ("" for here)
  if (!entries.length) return;
  let metadata;
  try {
    metadata = metadataText();
  } catch (error) {
    return showError(error);
  }
  const base = relative(state.prefix).replace(/\/$/, "");
  for (const {file, dir} of entries) {
    const folder = [folderOfKey(state.root.prefix), base, dir].filter(Boolean).join("/");
    const upload = {file, folder, bucket: state.root.bucket, metadata, sent: 0, status: "queued", tus: null};
    upload.el = uploadRow(upload);
    uploads.push(upload);
    $("upload-list").append(upload.el.li);
  }
  $("uploads").hidden = false;
  pump();
  drawTotal();
}

function uploadRow(upload) {
  const progress = h("progress", {max: upload.file.size || 1, value: 0, "aria-label": `Upload of ${upload.file.name}`});
  const text = h("span", {class: "status"});
  const pause = h("button", {type: "button", onclick: () => togglePause(upload)}, "Pause");
  const cancel = h("button", {type: "button", onclick: () => cancelUpload(upload)}, "Cancel");
  const where = upload.folder ? `${upload.folder}/` : "";
  const li = h("li", {}, h("span", {class: "upload-name"}, where, h("strong", {}, upload.file.name)), progress, text, pause, cancel);
  return {li, progress, text, pause, cancel};
}

function drawUpload(upload) {
  const {progress, text, pause, cancel} = upload.el;
  progress.value = upload.sent;
  const amount = `${bytes(upload.sent)} of ${bytes(upload.file.size)}`;
  text.textContent = {
    queued: `Waiting (${bytes(upload.file.size)})`,
    uploading: upload.resumedFrom ? `${amount}, resumed at ${bytes(upload.resumedFrom)}` : amount,
    paused: `Paused at ${amount}`,
    failed: `Stopped at ${amount}: ${upload.error}`,
    done: `Done, ${bytes(upload.file.size)}`,
    cancelled: "Cancelled",
  }[upload.status];
  pause.textContent = upload.status === "paused" || upload.status === "failed" ? "Resume" : "Pause";
  pause.hidden = !["uploading", "paused", "failed", "queued"].includes(upload.status);
  cancel.hidden = upload.status === "done" || upload.status === "cancelled";
  upload.el.li.dataset.status = upload.status;
  if (upload.fileId) upload.el.li.dataset.fileId = upload.fileId;
}

function drawTotal() {
  const live = uploads.filter((u) => u.status !== "cancelled");
  const size = live.reduce((s, u) => s + u.file.size, 0);
  const sent = live.reduce((s, u) => s + (u.status === "done" ? u.file.size : u.sent), 0);
  const done = live.filter((u) => u.status === "done").length;
  $("total-progress").max = size || 1;
  $("total-progress").value = sent;
  $("total-text").textContent = `${number.format(done)} of ${plural(live.length, "file", "files")} done, ${bytes(sent)} of ${bytes(size)}`;
}

function pump() {
  for (const upload of uploads) {
    if (running >= PARALLEL_UPLOADS) break;
    if (upload.status === "queued") begin(upload);
  }
}

function detailOf(error) {
  const response = error && error.originalResponse;
  if (response) {
    try {
      const body = JSON.parse(response.getBody());
      if (body.detail) return body.detail;
    } catch {
      // not JSON
    }
    return `${response.getStatus()} from filegate`;
  }
  return error && error.message ? error.message.split("\n")[0] : String(error);
}

function retryable(error) {
  const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
  return !(status >= 400 && status < 500 && ![408, 409, 423, 429].includes(status));
}

async function begin(upload) {
  upload.status = "uploading";
  running += 1;
  const metadata = {filename: upload.file.name, filetype: upload.file.type || "application/octet-stream"};
  if (upload.folder) metadata.folder = upload.folder;
  if (upload.bucket) metadata.bucket = upload.bucket;
  if (upload.metadata) metadata.metadata = upload.metadata;
  upload.tus = new tus.Upload(upload.file, {
    endpoint: TUS_ENDPOINT,
    chunkSize: CHUNK,
    retryDelays: [0, 1000, 3000, 5000, 10000],
    metadata,
    headers: keyHeaders(),
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    onShouldRetry: retryable,
    onProgress: (sent) => {
      upload.sent = sent;
      drawUpload(upload);
      drawTotal();
    },
    onAfterResponse: (request, response) => {
      const id = response.getHeader("File-Id"); // percent-encoded, as in a URL (docs/tus.md)
      if (id) upload.fileId = decodeURIComponent(id);
    },
    onSuccess: () => {
      upload.status = "done";
      upload.sent = upload.file.size;
      finish(upload);
      if (state.prefix && upload.folder.startsWith(relativeKeyFolder())) refreshSoon();
    },
    onError: (error) => {
      upload.status = "failed";
      upload.error = detailOf(error);
      finish(upload);
      showError(`${upload.file.name}: ${upload.error}`);
    },
  });
  drawUpload(upload);
  const previous = await upload.tus.findPreviousUploads();
  if (previous.length) {
    upload.tus.resumeFromPreviousUpload(previous[0]);
    upload.resumedFrom = null;
  }
  if (upload.status === "uploading") upload.tus.start();
  if (previous.length) resumedOffset(upload, previous[0]);
  showUnfinished();
}

async function resumedOffset(upload, previous) {
  try {
    const response = await fetch(previous.uploadUrl, {method: "HEAD", headers: {...keyHeaders(), "Tus-Resumable": "1.0.0"}});
    const offset = Number(response.headers.get("Upload-Offset"));
    if (offset > 0) {
      upload.resumedFrom = offset;
      drawUpload(upload);
    }
  } catch {
    // only a label
  }
}

function relativeKeyFolder() {
  return [folderOfKey(state.root.prefix), relative(state.prefix).replace(/\/$/, "")].filter(Boolean).join("/");
}

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => load(state.prefix).catch(showError), 400);
}

function finish(upload) {
  running -= 1;
  drawUpload(upload);
  drawTotal();
  pump();
}

function togglePause(upload) {
  if (upload.status === "uploading") {
    upload.tus.abort();
    upload.status = "paused";
    running -= 1;
    pump();
  } else if (upload.status === "queued") {
    upload.status = "paused";
  } else if (upload.status === "paused" || upload.status === "failed") {
    if (upload.tus) {
      upload.status = "uploading";
      running += 1;
      upload.tus.start();
    } else {
      upload.status = "queued";
      pump();
    }
  }
  drawUpload(upload);
  drawTotal();
}

async function cancelUpload(upload) {
  const wasRunning = upload.status === "uploading";
  upload.status = "cancelled";
  if (wasRunning) running -= 1;
  if (upload.tus) {
    try {
      await upload.tus.abort(true); // terminates it: nothing of it stays stored
    } catch (error) {
      showError(detailOf(error));
    }
  }
  drawUpload(upload);
  drawTotal();
  pump();
  showUnfinished();
}

$("pause-all").addEventListener("click", () => {
  uploads.filter((u) => u.status === "uploading" || u.status === "queued").forEach(togglePause);
});
$("resume-all").addEventListener("click", () => {
  uploads.filter((u) => u.status === "paused" || u.status === "failed").forEach(togglePause);
});
$("clear-done").addEventListener("click", () => {
  for (const upload of uploads.filter((u) => u.status === "done" || u.status === "cancelled")) {
    upload.el.li.remove();
    uploads.splice(uploads.indexOf(upload), 1);
  }
  drawTotal();
});

// Uploads left unfinished by an earlier page (a reload, a crash, a lost connection): tus-js-client
// keeps each one's URL in localStorage under its file's fingerprint.
function storedUploads() {
  const found = [];
  for (let i = 0; i < localStorage.length; i += 1) {
    const key = localStorage.key(i);
    if (!key.startsWith("tus::") || !key.includes(`-${TUS_ENDPOINT}::`)) continue;
    try {
      found.push({key, fingerprint: key.slice(5, key.lastIndexOf("::")), ...JSON.parse(localStorage.getItem(key))});
    } catch {
      // not one of ours
    }
  }
  const active = new Set(uploads.filter((u) => u.status !== "done" && u.status !== "cancelled").map((u) => fingerprint(u.file)));
  return found.filter((entry) => !active.has(entry.fingerprint));
}

let resumeTarget = null;
async function showUnfinished() {
  const entries = storedUploads();
  const list = $("unfinished-list");
  $("unfinished").hidden = entries.length === 0;
  if (entries.length) $("uploads").hidden = false;
  list.replaceChildren(
    ...entries.map((entry) => {
      const name = (entry.metadata && entry.metadata.filename) || "a file";
      const status = h("span", {class: "status"}, `${bytes(entry.size)}, started ${entry.creationTime ? when(entry.creationTime) : ""}`);
      const li = h(
        "li",
        {"data-upload-url": entry.uploadUrl},
        h("span", {class: "upload-name"}, entry.metadata && entry.metadata.folder ? `${entry.metadata.folder}/` : "", h("strong", {}, name)),
        status,
        h("button", {type: "button", class: "needs-write", onclick: () => {
          resumeTarget = entry;
          $("file-input").click();
        }}, `Resume ${name}…`),
        h("button", {type: "button", onclick: () => discard(entry)}, "Discard"),
      );
      offsetOf(entry).then((offset) => {
        if (offset === null) return;
        status.textContent = `${bytes(offset)} of ${bytes(entry.size)} stored; choose the file again to go on`;
      });
      return li;
    }),
  );
  applyScopes();
}

async function offsetOf(entry) {
  try {
    const response = await fetch(entry.uploadUrl, {method: "HEAD", headers: {...keyHeaders(), "Tus-Resumable": "1.0.0"}});
    if (response.status === 404 || response.status === 410) {
      localStorage.removeItem(entry.key); // expired or gone: nothing to resume
      return null;
    }
    return response.ok ? Number(response.headers.get("Upload-Offset")) : null;
  } catch {
    return null;
  }
}

async function discard(entry) {
  try {
    await fetch(entry.uploadUrl, {method: "DELETE", headers: {...keyHeaders(), "Tus-Resumable": "1.0.0"}});
  } catch {
    // the expiry sweep removes it in any case
  }
  localStorage.removeItem(entry.key);
  showUnfinished();
}

function picked(input) {
  const files = [...input.files];
  input.value = "";
  if (resumeTarget) {
    const target = resumeTarget;
    resumeTarget = null;
    const file = files.find((f) => fingerprint(f) === target.fingerprint);
    if (!file) {
      return showError("That is not the file this upload was started with (its name, size and date must match).");
    }
    const folder = (target.metadata && target.metadata.folder) || "";
    const upload = {file, folder, bucket: target.metadata && target.metadata.bucket, metadata: null, sent: 0, status: "queued", tus: null};
    upload.el = uploadRow(upload);
    uploads.push(upload);
    $("upload-list").append(upload.el.li);
    pump();
    drawTotal();
    return;
  }
  addFiles(files.map((file) => ({file, dir: (file.webkitRelativePath || "").split("/").slice(0, -1).join("/")})));
}
$("file-input").addEventListener("change", (event) => picked(event.target));
$("folder-input").addEventListener("change", (event) => picked(event.target));
$("upload-files").addEventListener("click", () => {
  resumeTarget = null;
  $("file-input").click();
});
$("upload-folder").addEventListener("click", () => {
  resumeTarget = null;
  $("folder-input").click();
});

// Drag and drop, folders too (walked with the File and Directory Entries API).
let dragDepth = 0;
const dragsFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
document.addEventListener("dragenter", (event) => {
  if (!dragsFiles(event) || !can("write")) return;
  dragDepth += 1;
  $("drop").hidden = false;
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) $("drop").hidden = true;
});
document.addEventListener("dragover", (event) => {
  if (dragsFiles(event)) event.preventDefault();
});
document.addEventListener("drop", async (event) => {
  if (!dragsFiles(event)) return;
  event.preventDefault();
  dragDepth = 0;
  $("drop").hidden = true;
  if (!can("write")) return;
  const entries = [...event.dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  const files = [];
  await Promise.all(entries.map((entry) => walk(entry, "", files)));
  addFiles(files);
});

async function walk(entry, dir, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({file, dir});
    return;
  }
  const reader = entry.createReader();
  const below = dir ? `${dir}/${entry.name}` : entry.name;
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) break;
    await Promise.all(batch.map((child) => walk(child, below, out)));
  }
}

// --- Go --------------------------------------------------------------------------------------

start().catch((error) => {
  if (error.status !== 401) showError(error);
});
