// Predict with a succeeded job: images dropped onto the page (or picked) go to POST /predict; each answer
// shows the image, its label and a bar per class.

import { request } from "./api.js";
import { attempt, h } from "./dom.js";

const MAX_FILES = 64; // per request, as the server accepts (TAAS_PREDICT_MAX_FILES' default)
const MAX_BARS = 10;

function bars(prediction, classes) {
  const ranked = prediction.probabilities.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, MAX_BARS);
  return h("ol", { class: "bars" }, ranked.map(([p, i]) => h("li", { class: i === prediction.class_index ? "best" : "" },
    h("span", { class: "name", title: classes[i] }, classes[i]),
    h("span", { class: "bar" }, h("span", { style: { width: `${(p * 100).toFixed(1)}%` } })),
    h("span", { class: "value" }, `${(p * 100).toFixed(1)}%`))));
}

function result(file, prediction, classes) {
  const url = URL.createObjectURL(file);
  return h("li", { class: "prediction", dataset: { label: prediction.label, filename: prediction.filename } },
    h("img", { src: url, alt: prediction.filename, onload: () => URL.revokeObjectURL(url) }),
    h("div", {},
      h("div", { class: "file" }, prediction.filename),
      h("div", { class: "label" }, prediction.label),
      bars(prediction, classes)));
}

// The drop zone for one job; `signal` ends its page-wide drop handling when the page goes away.
export function predictPanel(jobId, signal) {
  const results = h("ul", { class: "predictions", id: "predictions" });
  const input = h("input", { type: "file", id: "predict-files", accept: "image/*", multiple: true, hidden: true });
  const zone = h("div", { class: "drop", id: "drop", tabindex: "0", role: "button" },
    h("strong", {}, "Drop images here"), " (anywhere on this page), or click to choose them", input);

  async function predict(files) {
    files = [...files];
    if (!files.length) return;
    zone.classList.add("busy");
    for (let i = 0; i < files.length; i += MAX_FILES) {
      const chunk = files.slice(i, i + MAX_FILES);
      const form = new FormData();
      form.append("job_id", jobId);
      for (const file of chunk) form.append("files", file, file.name);
      const answer = await attempt(async () => (await request("/predict", { method: "POST", body: form })).json());
      if (!answer) break;
      answer.predictions.forEach((p, k) => results.prepend(result(chunk[k], p, answer.classes)));
    }
    zone.classList.remove("busy");
  }

  zone.addEventListener("click", (e) => e.target !== input && input.click());
  zone.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && input.click());
  input.addEventListener("change", () => { predict(input.files); input.value = ""; });
  const over = (e) => {
    if (![...(e.dataTransfer?.types || [])].includes("Files")) return;
    e.preventDefault();
    zone.classList.add("over");
  };
  document.addEventListener("dragover", over, { signal });
  document.addEventListener("dragleave", () => zone.classList.remove("over"), { signal });
  document.addEventListener("drop", (e) => {
    if (!e.dataTransfer?.files.length) return;
    e.preventDefault();
    zone.classList.remove("over");
    predict(e.dataTransfer.files);
  }, { signal });
  return h("div", {}, zone, results);
}
