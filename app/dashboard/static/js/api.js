// The API as the dashboard calls it: the key in the Authorization header (never a cookie), errors as
// ApiError carrying the server's {"detail"} message.

const KEY = "taas.key";

// The key lives in sessionStorage (gone when the tab closes: an admin key should not outlive the visit on
// a shared machine) unless the person asks to be remembered on this browser (localStorage). Either is
// readable by this origin's scripts only, and only scripts from this server run (the CSP).
export const keyStore = {
  get() {
    return sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";
  },
  set(key, remember) {
    this.clear();
    (remember ? localStorage : sessionStorage).setItem(KEY, key);
  },
  clear() {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

// Called on every 401: the dashboard goes back to its sign-in.
let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

// FastAPI's validation errors are a list of {loc, msg}; ours are one sentence.
export function detailText(body, status) {
  const detail = body && (body.detail ?? body.error);
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}

export function authHeaders(headers = {}) {
  const key = keyStore.get();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : { ...headers };
}

export async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page): the status says enough
  }
  const retry = response.headers.get("retry-after");
  return new ApiError(response.status, detailText(body, response.status), retry === null ? null : Number(retry));
}

// fetch with the key; an answer that is not 2xx throws ApiError.
export async function request(path, { method = "GET", headers = {}, body, signal } = {}) {
  const response = await fetch(path, { method, headers: authHeaders(headers), body, signal });
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) onUnauthorized(error);
    throw error;
  }
  return response;
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

export async function sendJSON(method, path, value) {
  const response = await request(path, {
    method,
    headers: { "Content-Type": "application/json" },
    body: value === undefined ? undefined : JSON.stringify(value),
  });
  return response.status === 204 ? null : response.json();
}

// A multipart upload with progress (fetch cannot report upload progress; XMLHttpRequest can).
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded, e.total);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr.response);
      const error = new ApiError(xhr.status, detailText(xhr.response, xhr.status));
      if (xhr.status === 401) onUnauthorized(error);
      reject(error);
    };
    xhr.onerror = () => reject(new ApiError(0, "the upload was interrupted (network error)"));
    xhr.send(form);
  });
}

// A file the API serves behind the key: fetched, then handed to the browser as a Blob link.
export async function download(path, filename) {
  const blob = await (await request(path)).blob();
  const url = URL.createObjectURL(blob);
  const a = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
