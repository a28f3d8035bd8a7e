// medweave web UI: small helpers shared by the three pages (no build step, no framework).
const params = new URLSearchParams(location.search);
if (params.get("token")) localStorage.setItem("medweaveToken", params.get("token"));

function authHeaders() {
  const t = localStorage.getItem("medweaveToken");
  return t ? { Authorization: "Bearer " + t } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const body = await res.json().catch(() => ({ error: { message: "response is not JSON" } }));
  if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function table(headers, rows) {
  const t = el("table", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h))));
  for (const r of rows) t.append(el("tr", {}, ...r.map((c) => el("td", {}, c))));
  return t;
}

function bars(values, id) {
  // signed horizontal bars for contributions (red raises the prediction, blue lowers it)
  const max = Math.max(1e-9, ...Object.values(values).map(Math.abs));
  const rows = Object.entries(values).map(([k, v]) => [k, el("span", {},
      el("span", { class: "bar " + (v >= 0 ? "pos" : "neg"), style: `width:${Math.round(150 * Math.abs(v) / max)}px` }),
      " " + (v >= 0 ? "+" : "") + v.toFixed(4))]);
  const t = table(["modality", "contribution"], rows);
  t.id = id;
  return t;
}

function showError(target, err) {
  target.append(el("p", { class: "error" }, "Error: " + err.message));
}

function caseLink(id) { return el("a", { href: "/case/" + encodeURIComponent(id) }, id); }

function reportCell(reports) {
  // the similar case's report(s): impression in bold, findings after it
  const cell = el("div", { class: "report" });
  for (const r of reports || []) {
    const p = el("p", {});
    if (r.impression) p.append(el("b", {}, r.impression + " "));
    if (r.findings) p.append(document.createTextNode(r.findings));
    if (!r.impression && !r.findings && r.text) p.append(document.createTextNode(r.text));
    cell.append(p);
  }
  if (!cell.childNodes.length) cell.append(el("span", { class: "note" }, "no report"));
  return cell;
}

function similarTable(similar) {
  const t = table(["case", "similarity", "split", "targets", "report"],
    similar.map((s) => [caseLink(s.case_id), s.similarity.toFixed(3), s.split, JSON.stringify(s.targets),
                        reportCell(s.reports)]));
  t.id = "similar";
  return t;
}
