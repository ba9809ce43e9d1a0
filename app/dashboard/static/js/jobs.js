// The jobs table: newest first, refreshed every two seconds while the tab is visible.

import { getJSON } from "./api.js";
import { attempt, between, h, jobTitle, percent, progressBar, seconds, statusBadge, when } from "./dom.js";

const REFRESH_MS = 2000;
const PAGE = 100;
const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled"];

function progressCell(job) {
  const { epoch, step, total_steps: total } = job.progress;
  const epochs = job.spec.epochs;
  return h("td", { class: "progress" }, progressBar(step, total),
    h("small", {}, total ? `epoch ${epoch} / ${epochs} · ${Math.floor((100 * step) / total)} %` : `— / ${epochs} epochs`));
}

function row(job) {
  const dataset = job.spec.dataset.name ?? `upload ${job.spec.dataset.id.slice(0, 8)}`;
  const ran = between(job.started_at, job.finished_at ?? (job.started_at && new Date().toISOString()));
  return h("tr", { dataset: { jobId: job.id, status: job.status } },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, jobTitle(job)), h("small", { class: "id" }, job.id.slice(0, 8))),
    h("td", {}, statusBadge(job.status)),
    progressCell(job),
    h("td", {}, dataset),
    h("td", {}, job.spec.model.arch),
    h("td", { class: "num" }, percent(job.result?.test_accuracy)),
    h("td", {}, when(job.created_at)),
    h("td", { class: "num" }, seconds(ran)));
}

export function jobsView(main, { signal }) {
  let limit = PAGE;
  let status = "";
  const body = h("tbody");
  const more = h("button", { type: "button", hidden: true, onclick: () => { limit += PAGE; refresh(); } }, "Show more");
  const filter = h("select", { onchange: () => { status = filter.value; refresh(); } },
    STATUSES.map((s) => h("option", { value: s }, s || "all statuses")));
  const empty = h("p", { class: "muted", hidden: true }, "No jobs yet. ", h("a", { href: "#/new" }, "Submit one"), ".");
  main.replaceChildren(
    h("div", { class: "heading" }, h("h1", {}, "Jobs"), filter, h("a", { class: "button", href: "#/new" }, "New job")),
    h("table", { class: "jobs", id: "jobs" },
      h("thead", {}, h("tr", {}, ["Job", "Status", "Progress", "Dataset", "Model", "Test acc.", "Created", "Ran"]
        .map((c) => h("th", {}, c)))),
      body),
    empty, more);

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    if (document.visibilityState !== "visible") return; // visibilitychange starts it again
    const query = new URLSearchParams({ limit: String(limit) });
    if (status) query.set("status", status);
    const page = await attempt(() => getJSON(`/jobs?${query}`, { signal }));
    if (signal.aborted) return;
    if (page) {
      body.replaceChildren(...page.data.map(row));
      empty.hidden = page.data.length > 0 || status !== "";
      more.hidden = !page.next_cursor;
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }
  document.addEventListener("visibilitychange", refresh, { signal });
  signal.addEventListener("abort", () => clearTimeout(timer));
  refresh();
}
