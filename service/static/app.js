// The storefront page: plain JavaScript against the service's public HTTP API, no build step
// and no third-party code, so it works offline and asks nothing of any other origin.
"use strict";

const KEY_STORAGE = "curatornet-api-key";
// Largest k asked for when looking up where a new upload ranks (the service's default max_k).
const RANK_DEPTH = 500;
const SIMILAR_K = 8;
// A neutral picture for works without one: inline, so it needs no request at all.
const PLACEHOLDER =
  "data:image/svg+xml," +
  encodeURIComponent(
    '<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256">' +
      '<rect width="256" height="256" fill="#e7e2da"/>' +
      '<rect x="64" y="64" width="128" height="128" fill="none" stroke="#b8aea0" stroke-width="6"/>' +
      "</svg>",
  );

const $ = (id) => document.getElementById(id);
const items = new Map(); // item id -> GET /items/{id} answer (null when it has none)

// The API key lives only in this browser session (sessionStorage), never in the URL.
const apiKey = () => sessionStorage.getItem(KEY_STORAGE) || "";

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The service's `detail`: a sentence, or FastAPI's list of located problems (a 422).
function describe(status, body) {
  const detail = body && body.detail;
  let text;
  if (Array.isArray(detail)) {
    text = detail.map((p) => `${(p.loc || []).join(".")}: ${p.msg}`).join("\n");
  } else {
    text = detail || `HTTP ${status}`;
  }
  if (status === 401 || status === 403) text += " (enter the API key at the top of the page)";
  return `${status}: ${text}`;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("X-API-Key", apiKey());
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, describe(response.status, body));
  return body;
}

const postJson = (path, body) =>
  api(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });

function showError(error) {
  const line = document.createElement("p");
  line.textContent = error instanceof ApiError ? error.message : String(error);
  $("errors").append(line);
  if (error.status === 401 || error.status === 403) $("api-key").focus();
}

const clearErrors = () => $("errors").replaceChildren();

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function item(id) {
  if (!items.has(id)) {
    items.set(
      id,
      api(`/items/${encodeURIComponent(id)}`).catch((error) => {
        if (error.status === 404) return null; // deleted: it stays in histories
        throw error;
      }),
    );
  }
  return items.get(id);
}

// The stored picture; else the work's own image_url; else the placeholder.
function picture(id, metadata, alt) {
  const img = element("img");
  img.alt = alt || id;
  img.loading = "lazy";
  const fallbacks = [metadata && metadata.image_url, PLACEHOLDER].filter(Boolean);
  img.addEventListener("error", () => {
    if (fallbacks.length) img.src = fallbacks.shift();
  });
  img.src = `/items/${encodeURIComponent(id)}/image`;
  return img;
}

async function thumbnail(id) {
  const work = await item(id);
  const img = picture(id, work && work.metadata, (work && work.metadata.title) || id);
  img.title = (work && work.metadata.title) || id;
  img.dataset.itemId = id;
  img.addEventListener("click", (event) => {
    event.stopPropagation(); // inside a card, the purchase clicked, not the card
    showSimilar(id);
  });
  return img;
}

async function card(recommended, rank) {
  const work = await item(recommended.item_id);
  const metadata = (work && work.metadata) || {};
  const node = element("article", "card");
  node.dataset.itemId = recommended.item_id;
  node.append(picture(recommended.item_id, metadata, metadata.title));
  const title = metadata.title || recommended.item_id;
  node.append(element("div", "title", rank ? `${rank}. ${title}` : title));
  const score = recommended.score == null ? "" : ` · score ${recommended.score.toFixed(3)}`;
  node.append(element("div", "meta", `artist ${recommended.artist_id}${score}`));
  if (recommended.because && recommended.because.length) {
    const because = element("div", "because", "because of");
    for (const reason of recommended.because) because.append(await thumbnail(reason.item_id));
    node.append(because);
  }
  node.addEventListener("click", () => showSimilar(recommended.item_id));
  return node;
}

const ids = (text) =>
  text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);

// The view lives in the query string, so that a view can be shared as a link.
function readView() {
  const query = new URLSearchParams(location.search);
  return {
    user: query.get("user") || "",
    k: Number(query.get("k")) || 12,
    include: query.get("include") || "",
    exclude: query.get("exclude") || "",
  };
}

function writeView(view) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(view)) if (value) query.set(name, value);
  history.pushState(null, "", `?${query}`);
}

function fillForm(view) {
  $("user").value = view.user;
  $("k").value = view.k;
  $("include").value = view.include;
  $("exclude").value = view.exclude;
}

function request(view, k) {
  const body = { user_id: view.user, k, explain: true };
  if (view.include) body.include_artists = ids(view.include);
  if (view.exclude) body.exclude_artists = ids(view.exclude);
  return body;
}

async function showPurchases(user) {
  const row = $("purchases");
  row.replaceChildren();
  $("purchases-count").textContent = "";
  try {
    const history = await api(`/users/${encodeURIComponent(user)}/history`);
    $("purchases-count").textContent = `(${history.purchases.length})`;
    const thumbnails = await Promise.all(history.purchases.map((p) => thumbnail(p.item_id)));
    row.replaceChildren(...thumbnails);
  } catch (error) {
    if (error.status !== 404) throw error;
    row.append(element("p", "muted", "no purchases recorded"));
  }
}

async function showRecommendations(view) {
  const grid = $("recommendations");
  grid.replaceChildren();
  const answer = await postJson("/recommend", request(view, view.k));
  const strategy = $("strategy");
  strategy.replaceChildren();
  if (answer.strategy !== "personalized") {
    strategy.append(
      element("span", "label", `fallback: ${answer.strategy.replaceAll("_", " ")}`),
      " (no purchase history, so not personal)",
    );
  } else {
    strategy.textContent = `(from ${answer.history_used} purchases)`;
  }
  grid.replaceChildren(...(await Promise.all(answer.items.map((r, n) => card(r, n + 1)))));
}

async function showView() {
  const view = readView();
  fillForm(view);
  if (!view.user) return;
  clearErrors();
  const results = await Promise.allSettled([showPurchases(view.user), showRecommendations(view)]);
  for (const result of results) if (result.status === "rejected") showError(result.reason);
}

async function showSimilar(id) {
  try {
    const answer = await api(`/items/${encodeURIComponent(id)}/similar?k=${SIMILAR_K}`);
    const work = await item(id);
    $("similar-to").textContent = (work && work.metadata.title) || id;
    $("similar").replaceChildren(...(await Promise.all(answer.items.map((r) => card(r)))));
    $("similar-section").hidden = false;
    $("similar-section").scrollIntoView({ block: "nearest" });
  } catch (error) {
    showError(error);
  }
}

async function showModel() {
  try {
    const [model, ready] = await Promise.all([
      api("/model"),
      fetch("/readyz").then((r) => r.json()), // a 503 still names the model and index size
    ]);
    $("model").textContent = `model ${model.version} · ${ready.index_size} works in the index`;
  } catch (error) {
    showError(error);
  }
}

async function showCandidates() {
  const list = $("candidates");
  try {
    const { user_ids: users } = await api("/users?limit=8");
    $("customers").replaceChildren(...users.map((u) => Object.assign(element("option"), { value: u })));
    list.replaceChildren(users.length ? "Customers with purchases:" : "No purchases recorded yet.");
    for (const user of users) {
      const button = element("button", "link", user);
      button.type = "button";
      button.dataset.user = user;
      button.addEventListener("click", () => {
        $("user").value = user;
        $("view").requestSubmit();
      });
      list.append(button);
    }
  } catch (error) {
    if (error.status !== 401) throw error;
    list.textContent = "Enter the API key to list customers, or type a customer's id.";
  }
}

async function upload(event) {
  event.preventDefault();
  clearErrors();
  const file = $("file").files[0];
  if (!file) return showError("choose or drop a picture first");
  const id = $("upload-id").value.trim() || `upload-${Date.now().toString(36)}`;
  const form = new FormData();
  form.set("image", file);
  form.set("id", id);
  form.set("artist_id", $("upload-artist").value.trim());
  const title = $("upload-title").value.trim();
  if (title) form.set("metadata", JSON.stringify({ title }));
  const out = $("uploaded");
  out.replaceChildren(element("p", "muted", "uploading…"));
  try {
    const answer = await api("/items", { method: "POST", body: form });
    items.delete(id);
    out.replaceChildren(element("p", "", `Stored; ${answer.index_size} works in the index now.`));
    const view = readView();
    let placed = null;
    if (view.user) {
      const ranking = await postJson("/recommend", request(view, RANK_DEPTH));
      const rank = ranking.items.findIndex((r) => r.item_id === id) + 1;
      const who = `customer ${view.user}`;
      const where = rank ? `rank ${rank} for ${who}` : `not in the top ${RANK_DEPTH} for ${who}`;
      out.append(element("p", "rank", `It now appears at ${where}.`));
      placed = ranking.items[rank - 1];
    }
    const work = await item(id);
    out.append(await card(placed || { item_id: id, artist_id: work.artist_id }, null));
    showModel();
  } catch (error) {
    out.replaceChildren();
    showError(error);
  }
}

function setUpDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    $("file").files = event.dataTransfer.files;
  });
}

function start() {
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", (event) => {
    sessionStorage.setItem(KEY_STORAGE, event.target.value.trim());
    showCandidates().catch(showError);
  });
  $("view").addEventListener("submit", (event) => {
    event.preventDefault();
    writeView({
      user: $("user").value.trim(),
      k: $("k").value,
      include: $("include").value.trim(),
      exclude: $("exclude").value.trim(),
    });
    showView();
  });
  window.addEventListener("popstate", showView);
  $("upload").addEventListener("submit", upload);
  setUpDrop();
  showModel();
  showCandidates().catch(showError);
  showView();
}

start();
