// One job: status and progress, the live loss and epoch charts (from GET /jobs/{id}/events), timings, spec,
// cancel, delete, weights, "run again with changes", and predictions once it succeeded.

import { download, getJSON, sendJSON } from "./api.js";
import { EpochChart, LossChart } from "./charts.js";
import {
  attempt, between, carryNotice, confirmButton, h, jobTitle, percent, progressBar, seconds, show, when,
} from "./dom.js";
import { predictPanel } from "./predict.js";
import { follow } from "./sse.js";

const ACTIVE = new Set(["queued", "running"]);
const SMOOTHING = 0.6;
const number = (v, digits = 4) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));

function epochRow(m) {
  return h("tr", {},
    [m.epoch, number(m.train_loss), number(m.test_loss), percent(m.test_accuracy, 2), number(m.val_loss),
      percent(m.val_accuracy, 2), m.lr === null ? "—" : m.lr.toPrecision(3), seconds(m.seconds)]
      .map((v) => h("td", { class: "num" }, String(v))));
}

function resultFacts(result) {
  return Object.entries(result || {}).flatMap(([name, value]) => [
    h("dt", {}, name.replaceAll("_", " ")),
    h("dd", {}, name.endsWith("accuracy") ? percent(value, 2)
      : typeof value === "number" ? String(Number(value.toPrecision(6))) : JSON.stringify(value)),
  ]);
}

export async function jobView(main, { id, signal }) {
  const path = `/jobs/${encodeURIComponent(id)}`;
  let job = await attempt(() => getJSON(path, { signal }));
  if (signal.aborted) return;
  if (!job) {
    main.replaceChildren(h("p", {}, "This job is not there. ", h("a", { href: "#/jobs" }, "All jobs")));
    return;
  }
  const epochSeconds = [];
  const status = h("span", { id: "job-status", class: "status" });
  const link = h("span", { id: "stream-state", class: "muted" });
  const progress = h("div", { class: "job-progress", id: "job-progress" });
  const actions = h("div", { class: "actions", id: "job-actions" });
  const error = h("pre", { class: "error", id: "job-error", hidden: true });
  const lossEl = h("div", { id: "loss-chart", class: "chart" }, h("p", { class: "muted" }, "No losses yet."));
  const epochEl = h("div", { id: "epoch-chart", class: "chart" }, h("p", { class: "muted" }, "No epoch has finished yet."));
  const epochRows = h("tbody");
  const timings = h("dl", { class: "facts", id: "job-timings" });
  const predictCard = h("section", { class: "card", id: "predict" });
  const smoothing = h("input", { type: "range", id: "smoothing", min: "0", max: "0.99", step: "0.01", value: String(SMOOTHING) });
  const smoothingValue = h("output", {}, SMOOTHING.toFixed(2));
  const logScale = h("input", { type: "checkbox", id: "log-scale" });

  const losses = new LossChart(lossEl, SMOOTHING);
  const epochs = new EpochChart(epochEl, { validation: (job.spec.dataset.val_fraction ?? 0) > 0 });
  signal.addEventListener("abort", () => { losses.destroy(); epochs.destroy(); });
  smoothing.addEventListener("input", () => {
    smoothingValue.value = Number(smoothing.value).toFixed(2);
    losses.setSmoothing(Number(smoothing.value));
  });
  logScale.addEventListener("change", () => losses.setLog(logScale.checked));

  main.replaceChildren(
    h("div", { class: "heading job-heading" }, h("h1", {}, jobTitle(job)), status, link, h("span", { class: "spacer" }), actions),
    h("div", { class: "job-line" }, progress, h("span", { class: "muted id" }, job.id)),
    error,
    h("div", { class: "grid" },
      h("section", { class: "card wide" },
        h("div", { class: "card-head" }, h("h2", {}, "Loss per batch"),
          h("label", { class: "log-scale" }, logScale, "log scale"),
          h("label", { class: "smoothing" }, "smoothing ", smoothing, smoothingValue)),
        lossEl),
      h("section", { class: "card" }, h("h2", {}, "Per epoch"), epochEl,
        h("table", { class: "epochs" },
          h("thead", {}, h("tr", {}, ["epoch", "train loss", "test loss", "test acc.", "val loss", "val acc.", "lr", "time"]
            .map((c) => h("th", {}, c)))),
          epochRows)),
      predictCard,
      h("section", { class: "card" }, h("h2", {}, "Timings and result"), timings),
      h("section", { class: "card" }, h("h2", {}, "Spec"), h("pre", { class: "spec", id: "job-spec" }, JSON.stringify(job.spec, null, 2)))));

  let shownStatus = null;
  function renderProgress() {
    const { epoch, step, total_steps: total } = job.progress;
    const text = total ? `epoch ${epoch} / ${job.spec.epochs} · step ${step} / ${total} · ${Math.floor((100 * step) / total)} %`
      : `epoch ${epoch} / ${job.spec.epochs}${step ? ` · step ${step}` : ""}`;
    progress.replaceChildren(progressBar(step, total), h("small", {}, text));
  }

  function renderTimings() {
    const waited = between(job.created_at, job.started_at);
    const ran = between(job.started_at, job.finished_at ?? (job.started_at && ACTIVE.has(job.status) ? new Date().toISOString() : null));
    const mean = epochSeconds.length ? epochSeconds.reduce((a, b) => a + b, 0) / epochSeconds.length : null;
    timings.replaceChildren(...[
      ["created", when(job.created_at)], ["started", when(job.started_at)], ["finished", when(job.finished_at)],
      ["queued for", seconds(waited)], ["ran for", seconds(ran)], ["mean epoch", seconds(mean)],
      ["device", job.device || "—"], ["queue", job.queue], ["attempt", `${job.attempt} of ${job.max_attempts}`],
    ].flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]), ...resultFacts(job.result));
  }

  function renderActions() {
    const buttons = [];
    if (ACTIVE.has(job.status)) {
      buttons.push(h("button", {
        type: "button", id: "cancel", disabled: job.cancel_requested,
        onclick: () => attempt(async () => { merge(await sendJSON("POST", `${path}/cancel`)); show("Cancel requested.", "info"); }),
      }, job.cancel_requested ? "Cancelling…" : "Cancel"));
    }
    if (job.status !== "queued" && job.progress.epoch > 0) {
      for (const which of ["best", "last"]) {
        buttons.push(h("button", {
          type: "button", class: "secondary", id: `weights-${which}`,
          onclick: () => attempt(() => download(`${path}/weights?which=${which}`, `${job.id}-${which}.safetensors`)),
        }, `Download ${which} weights`));
      }
    }
    buttons.push(h("a", { class: "button secondary", id: "run-again", href: `#/new?from=${job.id}` }, "Run again with changes"));
    if (job.status !== "running") {
      buttons.push(confirmButton("Delete", "Really delete?", () => attempt(async () => {
        await sendJSON("DELETE", path);
        carryNotice("Job deleted.");
        location.hash = "#/jobs";
      })));
    }
    actions.replaceChildren(...buttons);
  }

  function render() {
    const label = job.status === "running" && job.cancel_requested ? "running (cancelling)" : job.status;
    status.className = `status ${job.status}`;
    status.dataset.status = job.status;
    status.textContent = label;
    error.hidden = !job.error;
    error.textContent = job.error || "";
    renderProgress();
    renderTimings();
    if (shownStatus !== `${job.status}/${job.cancel_requested}/${job.progress.epoch > 0}`) {
      shownStatus = `${job.status}/${job.cancel_requested}/${job.progress.epoch > 0}`;
      renderActions();
      predictCard.replaceChildren(h("h2", {}, "Predict"), job.status === "succeeded" ? predictPanel(job.id, signal)
        : h("p", { class: "muted" }, "Drop images here to classify them once the job has succeeded."));
    }
  }

  function merge(fields) {
    const progress = { ...job.progress, ...(fields.progress || {}) };
    progress.step = Math.max(job.progress.step, progress.step); // the stream's losses run ahead of the row
    job = { ...job, ...fields, progress };
    render();
  }

  // A job's total steps are known once its worker has loaded the data, after the status event said
  // "running": read the row again (at most every 2 s) until they are.
  let rowRead = 0;
  function needTotal() {
    if (job.progress.total_steps || job.status !== "running" || Date.now() - rowRead < 2000) return;
    rowRead = Date.now();
    attempt(() => getJSON(path, { signal })).then((row) => row && !signal.aborted && merge(row));
  }

  render();
  follow(`${path}/events`, {
    signal,
    onState(state) {
      link.dataset.state = state;
      link.textContent = state === "live" ? "● live" : "reconnecting…";
    },
    onEvent(type, data) {
      if (type === "loss") {
        losses.add(data.losses);
        const last = data.losses[data.losses.length - 1];
        if (last) job.progress = { ...job.progress, step: Math.max(job.progress.step, last.step + 1) };
        renderProgress();
        needTotal();
      } else if (type === "epoch") {
        epochs.add(data);
        epochRows.append(epochRow(data));
        epochSeconds.push(data.seconds);
        merge({ progress: { epoch: Math.max(job.progress.epoch, data.epoch) } });
      } else if (type === "status") {
        merge(data);
      } else if (type === "end") {
        merge(data);
        link.dataset.state = "ended";
        link.textContent = "";
      }
    },
  }).catch((e) => show(e.detail || e.message));
}
