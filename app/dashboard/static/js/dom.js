// Building the page: elements from data (text is always text: nothing the API returns becomes markup).

// h("a", {href: "#/jobs", class: "x", onclick: f, dataset: {status: "running"}}, "text", child, ...)
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name in el && name !== "list" && name !== "form") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function show(text, kind = "error") {
  const notice = document.getElementById("notice");
  notice.textContent = text;
  notice.className = kind;
  notice.hidden = !text;
  clearTimeout(show.timer);
  if (text && kind !== "error") show.timer = setTimeout(() => { notice.hidden = true; }, 4000);
}

// A notice for the page navigated to next: navigation clears the notice on screen, then shows this one.
let carried = null;
export function carryNotice(text, kind = "info") { carried = [text, kind]; }

export function clearNotice() {
  const next = carried || [""];
  carried = null;
  show(...next);
}

// Runs an action, showing the API's message if it fails; returns its value (undefined on failure).
export async function attempt(action) {
  try {
    return await action();
  } catch (error) {
    if (error.name !== "AbortError") show(error.detail || error.message);
    return undefined;
  }
}

export function statusBadge(status, attrs = {}) {
  return h("span", { class: `status ${status}`, dataset: { status }, ...attrs }, status);
}

export function progressBar(done, total) {
  const fraction = total ? Math.min(1, done / total) : 0;
  return h("span", { class: "bar", title: total ? `${done} / ${total}` : "" },
    h("span", { style: { width: `${(fraction * 100).toFixed(1)}%` } }));
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

export function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "—";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function between(start, end) {
  return start && end ? (new Date(end) - new Date(start)) / 1000 : null;
}

export function percent(x, digits = 1) {
  return x === null || x === undefined ? "—" : `${(x * 100).toFixed(digits)} %`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// A button that asks again before acting ("Delete" -> "Really delete?"): no window.confirm.
export function confirmButton(label, question, action) {
  let armed = null;
  const button = h("button", {
    type: "button",
    class: "danger",
    onclick: async () => {
      if (!armed) {
        button.textContent = question;
        armed = setTimeout(() => { armed = null; button.textContent = label; }, 4000);
        return;
      }
      clearTimeout(armed);
      armed = null;
      button.textContent = label;
      button.disabled = true;
      await action();
      button.disabled = false;
    },
  }, label);
  return button;
}

export function jobTitle(job) {
  return job.name || `${job.spec.model.arch} on ${job.spec.dataset.name ?? "an upload"}`;
}
