// Datasets: upload an archive (with upload progress), follow its ingest, train on it, delete it.

import { getJSON, sendJSON, upload } from "./api.js";
import { attempt, bytes, confirmButton, h, progressBar, show, statusBadge, when } from "./dom.js";

const POLL_MS = 1000;

function row(d, refresh) {
  const shape = d.shape ? `${d.shape.channels}×${d.shape.height}×${d.shape.width}` : "—";
  const splits = d.splits ? Object.entries(d.splits).map(([name, s]) => `${name} ${s.images.toLocaleString()}`).join(" · ") : "—";
  const ingest = d.status === "processing"
    ? h("span", {}, progressBar(d.progress.images, d.progress.total),
      h("small", {}, d.progress.total ? `${d.progress.images} / ${d.progress.total} images` : "reading the archive"))
    : d.status === "failed" ? h("small", { class: "error-text" }, d.error) : `${d.classes.length} classes`;
  return h("tr", { dataset: { datasetId: d.id, status: d.status } },
    h("td", {}, d.name, h("small", { class: "id" }, d.id.slice(0, 8))),
    h("td", {}, statusBadge(d.status)),
    h("td", {}, ingest),
    h("td", {}, shape),
    h("td", {}, splits),
    h("td", { class: "num" }, bytes(d.archive_bytes)),
    h("td", {}, when(d.created_at)),
    h("td", {}, h("div", { class: "actions" },
      d.status === "ready" ? h("a", { class: "button secondary", href: `#/new?dataset=${d.id}` }, "Train on it") : null,
      confirmButton("Delete", "Really delete?", () => attempt(async () => {
        await sendJSON("DELETE", `/datasets/${d.id}`);
        refresh();
      })))));
}

function uploadForm(onUploaded) {
  const progress = h("div", { class: "upload-progress", id: "upload-progress", hidden: true });
  const submit = h("button", { type: "submit" }, "Upload");
  const form = h("form", { id: "upload", class: "job-form" },
    h("fieldset", {}, h("legend", {}, "Upload a dataset"),
      h("p", { class: "muted" }, "A .zip, .tar or .tar.gz of class folders (<class>/<image>, optionally under train/ "
        + "and test/), or a CSV of file,label beside the images."),
      h("div", { class: "params" },
        h("label", { class: "field" }, h("span", {}, "name"), h("input", { name: "name", required: true, maxLength: 200 })),
        h("label", { class: "field" }, h("span", {}, "archive"), h("input", { name: "file", type: "file", required: true, accept: ".zip,.tar,.gz,.tgz,.bz2,.xz" })),
        h("label", { class: "field" }, h("span", {}, "test fraction"), h("input", { name: "test_fraction", type: "number", min: "0", max: "0.9", step: "0.05", placeholder: "0.2" })),
        h("label", { class: "field" }, h("span", {}, "image size"), h("input", { name: "image_size", placeholder: "own size, or 32 or 32x48" })),
        h("label", { class: "field" }, h("span", {}, "channels"), h("select", { name: "channels" },
          h("option", { value: "" }, "as the images"), h("option", { value: "1" }, "1"), h("option", { value: "3" }, "3"))),
        h("label", { class: "field" }, h("span", {}, "seed"), h("input", { name: "seed", type: "number", min: "0", step: "1", placeholder: "0" })),
        h("label", { class: "field check" }, h("input", { name: "skip_invalid", type: "checkbox", value: "true" }), h("span", {}, "skip files that are not images"))),
      h("div", { class: "actions" }, submit), progress));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    for (const [name, value] of [...data.entries()]) if (value === "") data.delete(name);
    submit.disabled = true;
    progress.hidden = false;
    const report = (loaded, total) => progress.replaceChildren(progressBar(loaded, total),
      h("small", {}, `${bytes(loaded)} / ${bytes(total)} sent`));
    const file = data.get("file");
    report(0, file ? file.size : 0);
    const dataset = await attempt(() => upload("/datasets", data, report));
    submit.disabled = false;
    progress.hidden = true;
    if (dataset) {
      form.reset();
      show(`Uploaded ${dataset.name}: ingesting.`, "info");
      onUploaded();
    }
  });
  return form;
}

export function datasetsView(main, { signal }) {
  const body = h("tbody");
  const empty = h("p", { class: "muted", hidden: true }, "No datasets yet: the built-in ones (fashion-mnist, mnist) need none.");
  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    const page = await attempt(() => getJSON("/datasets?limit=100", { signal }));
    if (signal.aborted || !page) return;
    body.replaceChildren(...page.data.map((d) => row(d, refresh)));
    empty.hidden = page.data.length > 0;
    // Poll while an ingest runs; otherwise the list changes only by this page's own actions.
    if (page.data.some((d) => d.status === "processing")) timer = setTimeout(refresh, POLL_MS);
  }
  signal.addEventListener("abort", () => clearTimeout(timer));
  main.replaceChildren(
    h("div", { class: "heading" }, h("h1", {}, "Datasets")),
    uploadForm(refresh),
    h("table", { class: "jobs", id: "datasets" },
      h("thead", {}, h("tr", {}, ["Dataset", "Status", "Classes / ingest", "Shape", "Images", "Archive", "Uploaded", ""]
        .map((c) => h("th", {}, c)))),
      body),
    empty);
  refresh();
}
