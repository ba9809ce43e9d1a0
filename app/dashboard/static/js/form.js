// The new-job form, generated from GET /catalog: a select per registry (datasets, architectures, optimizers,
// schedulers, losses) and, for the chosen entry, a field per property of its params' JSON schema. "Run again
// with changes" (#/new?from=<job id>) fills it from that job's spec.

import { getJSON, sendJSON } from "./api.js";
import { attempt, h } from "./dom.js";

function field(label, input, help) {
  return h("label", { class: "field" }, h("span", {}, label), input, help ? h("small", {}, help) : null);
}

const bound = (s, key) => s[key] ?? s[`exclusive${key[0].toUpperCase()}${key.slice(1)}`];

// One property of a params schema: {el, read()}; read() is undefined for "the server's default".
function schemaField(name, key, schema, value) {
  let s = schema;
  let nullable = false;
  if (schema.anyOf) {
    const members = schema.anyOf.filter((m) => m.type !== "null");
    nullable = members.length < schema.anyOf.length;
    s = { ...schema, ...members[0] };
  }
  const initial = value !== undefined ? value : schema.default;
  const label = schema.title || key;
  const help = [schema.description, nullable ? "empty: none" : null].filter(Boolean).join("; ");
  let input;
  let read;
  if (s.enum) {
    input = h("select", { name }, s.enum.map((v) => h("option", { value: v, selected: v === initial }, v)));
    read = () => input.value;
  } else if (s.type === "boolean") {
    input = h("input", { type: "checkbox", name, checked: Boolean(initial) });
    read = () => input.checked;
    return { el: h("label", { class: "field check" }, input, h("span", {}, label)), read };
  } else if (s.type === "integer" || s.type === "number") {
    input = h("input", {
      type: "number", name, step: s.type === "integer" ? "1" : "any", min: bound(s, "minimum"), max: bound(s, "maximum"),
      value: initial === null || initial === undefined ? "" : String(initial),
    });
    read = () => {
      if (input.validity.badInput) throw new Error(`${label}: not a number`);
      if (input.value === "") return nullable ? null : undefined;
      return Number(input.value);
    };
  } else if (s.type === "array" && [s.items, ...(s.prefixItems || [])].some((i) => i && /number|integer/.test(i.type))) {
    input = h("input", { type: "text", name, value: (initial || []).join(", "), placeholder: "numbers, comma-separated" });
    read = () => {
      const parts = input.value.split(/[\s,]+/).filter(Boolean).map(Number);
      if (parts.some(Number.isNaN)) throw new Error(`${label}: numbers separated by commas`);
      return parts;
    };
  } else {
    input = h("input", { type: "text", name, value: initial === undefined ? "" : JSON.stringify(initial), placeholder: "JSON" });
    read = () => {
      if (input.value.trim() === "") return undefined;
      try {
        return JSON.parse(input.value);
      } catch {
        throw new Error(`${label}: not valid JSON`);
      }
    };
  }
  return { el: field(label, input, help), read };
}

// The fields of one registry entry's params.
function paramsFields(prefix, schema, values = {}) {
  const fields = Object.entries(schema.properties || {}).map(
    ([key, prop]) => [key, schemaField(`${prefix}.${key}`, key, prop, values[key])]);
  return {
    el: h("div", { class: "params" }, fields.map(([, f]) => f.el)),
    read() {
      const out = {};
      for (const [key, f] of fields) {
        const v = f.read();
        if (v !== undefined) out[key] = v;
      }
      return out;
    },
  };
}

// A select over a registry, with the chosen entry's params below it; read() is {name, params} (or null).
function registryField(label, name, entries, chosen, values, { none = false, describe } = {}) {
  const select = h("select", { name },
    none ? h("option", { value: "" }, "none") : null,
    entries.map((e) => h("option", { value: e.name, selected: e.name === chosen }, e.name)));
  if (none && !chosen) select.value = "";
  const about = h("small", { class: "about" });
  const slot = h("div");
  let params = null;
  function choose(initialValues) {
    const entry = entries.find((e) => e.name === select.value);
    about.textContent = entry && describe ? describe(entry) : "";
    params = entry ? paramsFields(name, entry.params, initialValues) : null;
    slot.replaceChildren(params ? params.el : "");
  }
  select.addEventListener("change", () => choose({}));
  choose(values);
  return {
    el: h("fieldset", {}, h("legend", {}, label), field("", select), about, slot),
    read: () => (select.value ? { name: select.value, params: params.read() } : null),
  };
}

function datasetField(catalog, spec, preferredId) {
  const value = (d) => (d.id ? `id:${d.id}` : `name:${d.name}`);
  const current = preferredId ? `id:${preferredId}` : spec?.id ? `id:${spec.id}` : `name:${spec?.name ?? "fashion-mnist"}`;
  const select = h("select", { name: "dataset" }, catalog.datasets.map((d) => h("option", { value: value(d),
    selected: value(d) === current }, d.source === "upload" ? `${d.name} (upload ${d.id.slice(0, 8)})` : d.name)));
  const about = h("small", { class: "about" });
  const describe = () => {
    const d = catalog.datasets.find((x) => value(x) === select.value);
    about.textContent = d ? `${d.description} ${d.shape.channels}×${d.shape.height}×${d.shape.width}, ${d.classes.length} classes.` : "";
  };
  select.addEventListener("change", describe);
  describe();
  const augment = spec?.augment || {};
  const val = h("input", { type: "number", name: "dataset.val_fraction", min: "0", max: "0.5", step: "0.05", value: String(spec?.val_fraction ?? 0) });
  const normalize = h("input", { type: "checkbox", name: "dataset.normalize", checked: Boolean(spec?.normalize) });
  const crop = h("input", { type: "number", name: "dataset.random_crop", min: "1", max: "64", step: "1", value: augment.random_crop ? String(augment.random_crop.padding) : "", placeholder: "off" });
  const flip = h("input", { type: "checkbox", name: "dataset.horizontal_flip", checked: Boolean(augment.horizontal_flip) });
  return {
    el: h("fieldset", {}, h("legend", {}, "Dataset"), field("", select), about,
      h("div", { class: "params" },
        field("validation fraction", val, "held out of the training images"),
        h("label", { class: "field check" }, normalize, h("span", {}, "normalize (per-channel mean/std)")),
        field("random crop padding", crop, "empty: no crop"),
        h("label", { class: "field check" }, flip, h("span", {}, "horizontal flip")))),
    read() {
      const [kind, key] = [select.value.slice(0, select.value.indexOf(":")), select.value.slice(select.value.indexOf(":") + 1)];
      return {
        [kind]: key, val_fraction: Number(val.value || 0), normalize: normalize.checked,
        augment: { random_crop: crop.value ? { padding: Number(crop.value) } : null, horizontal_flip: flip.checked },
      };
    },
  };
}

const without = (obj, key) => Object.fromEntries(Object.entries(obj || {}).filter(([k]) => k !== key));

export async function newJobView(main, { query, signal }) {
  const fromId = query.get("from");
  const [catalog, from] = await Promise.all([
    attempt(() => getJSON("/catalog", { signal })),
    fromId ? attempt(() => getJSON(`/jobs/${encodeURIComponent(fromId)}`, { signal })) : null,
  ]);
  if (signal.aborted || !catalog) return;
  const spec = from?.spec ?? {};
  const dataset = datasetField(catalog, spec.dataset, query.get("dataset"));
  const model = registryField("Model", "arch", catalog.architectures, spec.model?.arch ?? "mlp", spec.model?.params,
    { describe: (a) => `${a.description} (smallest image side ${a.min_size})` });
  const optimizer = registryField("Optimizer", "optimizer", catalog.optimizers, spec.optimizer?.name ?? "sgd", without(spec.optimizer, "name"));
  const scheduler = registryField("Scheduler", "scheduler", catalog.schedulers, spec.scheduler?.name ?? "", without(spec.scheduler, "name"),
    { none: true, describe: (s) => `stepped every ${s.interval}` });
  const loss = registryField("Loss", "loss", catalog.losses, spec.loss?.name ?? "cross_entropy", without(spec.loss, "name"),
    { describe: (l) => l.description });
  const input = (name, attrs) => h("input", { name, ...attrs });
  const top = {
    name: input("name", { type: "text", maxLength: 200, value: spec.name ?? "", placeholder: "optional" }),
    epochs: input("epochs", { type: "number", min: "1", max: "1000", step: "1", value: String(spec.epochs ?? 10) }),
    batch_size: input("batch_size", { type: "number", min: "1", max: "65536", step: "1", value: String(spec.batch_size ?? 64) }),
    shuffle: input("shuffle", { type: "checkbox", checked: Boolean(spec.shuffle) }),
    seed: input("seed", { type: "number", min: "0", step: "1", value: String(spec.seed ?? 0) }),
    device: input("device", { type: "text", value: spec.device ?? "auto", list: "devices" }),
    max_attempts: input("max_attempts", { type: "number", min: "1", max: "10", step: "1", value: String(spec.max_attempts ?? 3) }),
  };
  const preview = h("pre", { id: "spec-preview", class: "spec" });

  function build() {
    const m = model.read();
    const o = optimizer.read();
    const s = scheduler.read();
    const l = loss.read();
    const out = {
      dataset: dataset.read(),
      model: { arch: m.name, params: m.params },
      optimizer: { name: o.name, ...o.params },
      scheduler: s ? { name: s.name, ...s.params } : null,
      loss: { name: l.name, ...l.params },
      epochs: Number(top.epochs.value), batch_size: Number(top.batch_size.value), shuffle: top.shuffle.checked,
      seed: Number(top.seed.value), device: top.device.value.trim() || "auto", max_attempts: Number(top.max_attempts.value),
    };
    if (top.name.value.trim()) out.name = top.name.value.trim();
    return out;
  }
  function refreshPreview() {
    try {
      preview.textContent = JSON.stringify(build(), null, 2);
    } catch (e) {
      preview.textContent = e.message;
    }
  }

  const submit = h("button", { type: "submit", id: "submit-job" }, "Submit job");
  const form = h("form", { id: "new-job", class: "job-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Job"), h("div", { class: "params" },
      field("name", top.name), field("epochs", top.epochs), field("batch size", top.batch_size), field("seed", top.seed),
      field("device", top.device, "auto, cpu, cuda, cuda:1, mps"), field("attempts", top.max_attempts, "retries after a crash"),
      h("label", { class: "field check" }, top.shuffle, h("span", {}, "shuffle every epoch")))),
    h("datalist", { id: "devices" }, ["auto", "cpu", "cuda", "mps"].map((d) => h("option", { value: d }))),
    dataset.el, model.el, optimizer.el, scheduler.el, loss.el,
    h("div", { class: "actions" }, submit, h("a", { class: "button secondary", href: "#/jobs" }, "Back")),
    h("details", {}, h("summary", {}, "The spec as JSON (what POST /jobs receives)"), preview));
  form.addEventListener("input", refreshPreview);
  form.addEventListener("change", refreshPreview);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    const job = await attempt(() => sendJSON("POST", "/jobs", build()));
    submit.disabled = false;
    if (job) location.hash = `#/jobs/${job.id}`;
  });
  refreshPreview();
  main.replaceChildren(
    h("div", { class: "heading" }, h("h1", {}, from ? "Run again with changes" : "New job")),
    ...(from ? [h("p", { class: "muted" }, "From job ", h("a", { href: `#/jobs/${from.id}` }, from.name || from.id),
      "; change what you like.")] : []),
    form);
}
