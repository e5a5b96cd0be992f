/* Worklist: fetches /api/studies every few seconds, keeps search, filter and sort. */
"use strict";

(() => {
  const REFRESH_MS = 4000;
  const body = document.getElementById("worklist-body");
  const search = document.getElementById("search");
  const statusFilter = document.getElementById("status-filter");
  const state = document.getElementById("refresh-state");
  let sort = "received";
  let order = "desc";
  let timer = null;

  function row(study) {
    const tr = Echo.el("tr");
    tr.dataset.studyId = study.id;
    tr.className = "clickable";
    const name = Echo.el("td");
    const link = Echo.el("a", study.patient_name || "(no name)");
    link.href = "/studies/" + encodeURIComponent(study.id);
    link.className = "study-link";
    name.appendChild(link);
    tr.appendChild(name);
    tr.appendChild(Echo.el("td", study.patient_id));
    tr.appendChild(Echo.el("td", study.accession_number || "—"));
    tr.appendChild(Echo.el("td", study.study_date || "—"));
    const status = Echo.el("td");
    status.appendChild(Echo.el("span", study.status_label, "status status-" + study.status));
    if (study.status_reason) {
      status.appendChild(Echo.el("div", study.status_reason, "reason"));
    }
    tr.appendChild(status);
    // a withheld EF reads "not measurable", its reason in the tooltip; the quality score below
    const ef = Echo.el("td", study.ef_withheld ? study.ef_text : Echo.fmt(study.ef_percent, "%"), "num ef");
    if (study.ef_withheld) {
      ef.classList.add("withheld");
      ef.title = study.ef_reason;
    }
    if (study.quality_text) ef.appendChild(Echo.el("div", study.quality_text, "quality small muted"));
    tr.appendChild(ef);
    const flags = Echo.el("td");
    if (study.demo_models) flags.appendChild(Echo.el("span", "DEMO", "flag demo"));
    for (const flag of study.flags) {
      const f = Echo.el("span", flag.code, "flag");
      f.title = flag.message;
      flags.appendChild(f);
    }
    tr.appendChild(flags);
    tr.appendChild(Echo.el("td", new Date(study.received_at).toLocaleString()));
    tr.addEventListener("click", (event) => {
      if (event.target.tagName !== "A") window.location.assign(link.href);
    });
    return tr;
  }

  async function refresh() {
    const params = new URLSearchParams({ sort, order });
    if (search.value.trim()) params.set("q", search.value.trim());
    if (statusFilter.value) params.set("status", statusFilter.value);
    try {
      const data = await Echo.getJSON("/api/studies?" + params.toString(), true);
      Echo.clear(body);
      if (!data.studies.length) {
        const tr = Echo.el("tr");
        const td = Echo.el("td", "No studies match.", "muted");
        td.colSpan = 8;
        tr.appendChild(td);
        body.appendChild(tr);
      }
      for (const study of data.studies) body.appendChild(row(study));
      state.textContent = "Updated " + new Date().toLocaleTimeString();
    } catch (error) {
      state.textContent = "Cannot refresh: " + error.message;
    }
  }

  function schedule(now) {
    clearTimeout(timer);
    timer = setTimeout(async () => { await refresh(); schedule(false); }, now ? 0 : REFRESH_MS);
  }

  let typing = null;
  search.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => schedule(true), 250); });
  statusFilter.addEventListener("change", () => schedule(true));
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.classList.add("sortable");
    th.addEventListener("click", () => {
      if (sort === th.dataset.sort) order = order === "asc" ? "desc" : "asc";
      else { sort = th.dataset.sort; order = "asc"; }
      for (const other of document.querySelectorAll("th[data-sort]")) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", order === "asc" ? "ascending" : "descending");
      schedule(true);
    });
  }
  schedule(true);
})();
