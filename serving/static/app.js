// The page uses the public API only: search, book details, similar books, recommendations.
"use strict";

const $ = (id) => document.getElementById(id);
const PLACEHOLDER =
  "data:image/svg+xml;utf8," +
  encodeURIComponent('<svg xmlns="http://www.w3.org/2000/svg" width="60" height="90"><rect width="60" height="90" fill="#dde3ee"/><text x="30" y="50" font-size="10" text-anchor="middle" fill="#5b6475">no cover</text></svg>');

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const version = response.headers.get("X-Model-Version");
  if (version) $("model-version").textContent = "model " + version;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : response.statusText;
    throw new Error(message);
  }
  return body;
}

function text(tag, className, value) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  el.textContent = value == null ? "" : String(value);
  return el;
}

function cover(url, alt) {
  const img = document.createElement("img");
  img.className = "cover";
  img.alt = alt || "cover";
  img.src = url || PLACEHOLDER;
  img.onerror = () => { img.onerror = null; img.src = PLACEHOLDER; };
  return img;
}

function card(item, onClick) {
  const li = document.createElement("li");
  li.dataset.isbn = item.isbn;
  li.appendChild(cover(item.image_url || item.image_url_m, item.title));
  const body = document.createElement("div");
  body.appendChild(text("div", "title", item.title || item.isbn));
  body.appendChild(text("div", "meta", item.author || ""));
  if (item.source && item.score !== undefined) {
    body.appendChild(text("span", "badge", item.source));
  }
  if (item.reason) body.appendChild(text("div", "reason", item.reason));
  li.appendChild(body);
  if (onClick) {
    li.classList.add("clickable");
    li.addEventListener("click", () => onClick(item.isbn));
  }
  return li;
}

function fill(listId, items, onClick) {
  const list = $(listId);
  list.replaceChildren(...items.map((item) => card(item, onClick)));
}

function status(id, message, isError) {
  const el = $(id);
  el.textContent = message;
  el.classList.toggle("error", Boolean(isError));
}

async function showBook(isbn) {
  $("book-panel").hidden = false;
  status("similar-status", "Loading…");
  try {
    const book = await api("/v1/books/" + encodeURIComponent(isbn));
    const details = $("book-details");
    const info = document.createElement("div");
    info.appendChild(text("h3", "title", book.title));
    info.appendChild(text("div", "meta", book.author ? "by " + book.author : ""));
    info.appendChild(text("div", "meta", [book.publisher, book.year].filter(Boolean).join(", ")));
    info.appendChild(text("div", "meta", "ISBN " + book.isbn));
    details.replaceChildren(cover(book.image_url_l || book.image_url_m, book.title), info);
  } catch (err) {
    $("book-details").replaceChildren(text("p", "status error", err.message));
  }
  try {
    const similar = await api("/v1/books/" + encodeURIComponent(isbn) + "/similar?k=8");
    fill("similar-results", similar.items, showBook);
    status("similar-status", similar.items.length ? "" : "No similar books known.");
  } catch (err) {
    fill("similar-results", []);
    status("similar-status", err.message, true);
  }
  $("book-panel").scrollIntoView({ behavior: "smooth" });
}

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const q = $("search-input").value.trim();
  if (!q) return;
  status("search-status", "Searching…");
  try {
    const result = await api("/v1/books?q=" + encodeURIComponent(q));
    fill("search-results", result.items, showBook);
    status("search-status", result.count + " book(s) found.");
  } catch (err) {
    fill("search-results", []);
    status("search-status", err.message, true);
  }
});

$("user-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = $("user-input").value.trim();
  status("user-status", "Loading…");
  try {
    const result = await api("/v1/users/" + encodeURIComponent(id) + "/recommendations?k=12");
    fill("user-results", result.items, showBook);
    status("user-status", result.known_user
      ? "Recommendations for reader " + result.user_id + "."
      : "Reader " + result.user_id + " is new here: popular books instead.");
  } catch (err) {
    fill("user-results", []);
    status("user-status", err.message, true);
  }
});
