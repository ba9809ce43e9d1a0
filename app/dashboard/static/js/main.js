// The dashboard's shell: sign-in (when the server has keys), the hash router, the navigation.

import { getJSON, keyStore, whenUnauthorized } from "./api.js";
import { datasetsView } from "./datasets.js";
import { clearNotice, h, show } from "./dom.js";
import { newJobView } from "./form.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const signOut = document.getElementById("sign-out");

// #/jobs, #/jobs/<id>, #/new?from=<id>, #/new?dataset=<id>, #/datasets
const ROUTES = [
  [/^\/?(jobs)?$/, "jobs", () => jobsView],
  [/^\/jobs\/([^/]+)$/, "jobs", (m) => (main, ctx) => jobView(main, { ...ctx, id: decodeURIComponent(m[1]) })],
  [/^\/new$/, "new", () => newJobView],
  [/^\/datasets$/, "datasets", () => datasetsView],
];

let current = null; // the AbortController of the view on screen

function route() {
  if (current) current.abort();
  current = new AbortController();
  clearNotice();
  window.scrollTo(0, 0);
  const [path, search = ""] = location.hash.slice(1).split("?");
  const query = new URLSearchParams(search);
  for (const [pattern, section, make] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const a of nav.querySelectorAll("a[data-nav]")) a.classList.toggle("active", a.dataset.nav === section);
    make(match)(view, { query, signal: current.signal });
    return;
  }
  view.replaceChildren(h("p", {}, "No such page. ", h("a", { href: "#/jobs" }, "Jobs")));
}

function signInView(message) {
  if (current) current.abort();
  current = null;
  nav.hidden = true;
  signOut.hidden = true;
  const key = h("input", { type: "password", id: "api-key", name: "key", autocomplete: "off", required: true,
    placeholder: "taas_…", spellcheck: false });
  const remember = h("input", { type: "checkbox", id: "remember" });
  const form = h("form", { id: "sign-in", class: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "This server needs an API key: the one ./taas.sh run prints (kept in .taas/api-key), "
      + "or one from taas keys create. It stays in this tab only, unless you ask to be remembered."),
    h("label", { class: "field" }, h("span", {}, "API key"), key),
    h("label", { class: "field check" }, remember, h("span", {}, "remember on this browser")),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    keyStore.set(key.value.trim(), remember.checked);
    start();
  });
  view.replaceChildren(form);
  show(message || "");
  key.focus();
}

// Whether the server takes this browser's key (or needs none): the catalog is the cheapest keyed read.
async function start() {
  const hadKey = Boolean(keyStore.get());
  try {
    await getJSON("/catalog");
  } catch (error) {
    if (error.status === 401) {
      keyStore.clear();
      signInView(hadKey ? `The key was refused: ${error.detail}` : "");
    } else {
      view.replaceChildren(h("p", { class: "error-text" }, `The API did not answer: ${error.detail || error.message}`));
    }
    return;
  }
  nav.hidden = false;
  signOut.hidden = !hadKey; // with auth off (TAAS_AUTH=false) there is nothing to sign out of
  route();
}

// A key revoked while the page is open: back to the sign-in (start() handles its own probe's 401).
whenUnauthorized((error) => {
  if (nav.hidden) return;
  keyStore.clear();
  signInView(`Signed out: ${error.detail}`);
});
signOut.addEventListener("click", () => {
  keyStore.clear();
  signInView("");
});
window.addEventListener("hashchange", () => nav.hidden || route());
start();
