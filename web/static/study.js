/* Study review: measurements, cine and curve, report editing and sign-off, export status, chat. */
"use strict";

(() => {
  const studyId = document.body.dataset.studyId;
  const role = document.body.dataset.role;
  const $ = (id) => document.getElementById(id);
  let detail = null;
  let player = null;
  let curve = null;
  let exportTimer = null;

  function fillMeasurements(loop) {
    const m = loop.measurements;
    const efRow = loop.table.find((r) => r.key === "lvef_regression") || loop.table.find((r) => r.key === "lvef_disks");
    // a withheld EF is never a number: "not measurable" and why (the rows below are the page's)
    $("ef-value").textContent = efRow ? efRow.text : loop.ef.withheld ? loop.ef.text : "not measured";
    $("ef-method").textContent = efRow ? "(" + efRow.label + ")" : loop.ef.withheld ? "(" + loop.ef.reason + ")" : "";
    $("quality-score").textContent = loop.ef.quality_text;
    const tbody = $("measurement-table").querySelector("tbody");
    Echo.clear(tbody);
    for (const row of loop.table) {
      const tr = Echo.el("tr");
      tr.dataset.key = row.key;
      tr.appendChild(Echo.el("td", row.label));
      tr.appendChild(Echo.el("td", row.text, "num value"));
      const method = Echo.el("td", row.method);
      if (row.algorithm) method.appendChild(Echo.el("div", row.algorithm, "muted small"));
      tr.appendChild(method);
      tbody.appendChild(tr);
    }
    const c = loop.comparison;
    $("ef-comparison").textContent = c.difference_points === null
      ? "Regression vs disks: not comparable (one of them was not measured or is not measurable)."
      : "Regression " + Echo.fmt(c.ef_regression_percent, "%") + " vs method of disks " +
        Echo.fmt(c.ef_disks_percent, "%") + ": difference " +
        (c.difference_points >= 0 ? "+" : "") + c.difference_points.toFixed(1) + " points.";
    const beats = $("beat-table").querySelector("tbody");
    Echo.clear(beats);
    m.beats.forEach((b, i) => {
      const tr = Echo.el("tr");
      for (const v of [i + 1, b.ed_frame + 1, b.es_frame + 1]) tr.appendChild(Echo.el("td", v));
      tr.appendChild(Echo.el("td", Echo.fmt(b.ef_percent, "%"), "num"));
      tr.appendChild(Echo.el("td", Echo.fmt(b.ef_disks_percent, "%"), "num"));
      tr.appendChild(Echo.el("td", Echo.fmt(b.edv_ml, "mL"), "num"));
      tr.appendChild(Echo.el("td", Echo.fmt(b.esv_ml, "mL"), "num"));
      beats.appendChild(tr);
    });
    const flags = $("flags");
    Echo.clear(flags);
    if (!loop.flags.length) flags.appendChild(Echo.el("li", "None raised.", "muted"));
    for (const f of loop.flags) {
      const li = Echo.el("li");
      li.appendChild(Echo.el("span", f.code, "flag"));
      li.appendChild(document.createTextNode(" " + f.message));
      flags.appendChild(li);
    }
  }

  async function setUpCine(loop) {
    const m = loop.measurements;
    const frameTime = loop.frame_time_ms || 1000 / 30;
    $("frame-count").textContent = m.n_frames;
    $("frame-rate").textContent = loop.frame_time_ms
      ? (1000 / loop.frame_time_ms).toFixed(1) + " frames/s"
      : "frame rate unknown: shown at 30 frames/s";
    $("loop-info").textContent = loop.series_description ? "· " + loop.series_description : "";
    const areas = m.lv_area_cm2 || m.lv_area_px || [];
    curve = {
      values: areas, unit: m.lv_area_cm2 ? "cm²" : "px²", beats: m.beats,
      ed: m.ed_frames, es: m.es_frames, onSeek: (i) => { player.pause(); $("play").textContent = "Play"; player.seek(i); },
    };
    const contours = await Echo.getJSON(loop.contours_url);
    player = new CinePlayer({
      canvas: $("cine"), frameCount: m.n_frames, frameTimeMs: frameTime, contours,
      edFrames: m.ed_frames, esFrames: m.es_frames,
      frameUrl: (i) => loop.frames_url + i + ".jpg",
      onFrame: (i, phase) => {
        $("frame-index").textContent = i + 1;
        $("frame-slider").value = String(i);
        $("phase-marker").textContent = phase ? phase === "ED" ? "end-diastole" : "end-systole" : "";
        drawAreaCurve($("curve"), curve, i);
      },
    });
    drawAreaCurve($("curve"), curve, 0);
    try {
      await player.load();
      $("cine-loading").hidden = true;
    } catch (error) {
      $("cine-loading").textContent = "Cannot load the frames: " + error.message;
      return;
    }
    $("play").addEventListener("click", () => {
      if (player.playing) { player.pause(); $("play").textContent = "Play"; }
      else { player.play(); $("play").textContent = "Pause"; }
    });
    $("step-back").addEventListener("click", () => { player.step(-1); $("play").textContent = "Play"; });
    $("step-forward").addEventListener("click", () => { player.step(1); $("play").textContent = "Play"; });
    $("frame-slider").max = String(m.n_frames - 1);
    $("frame-slider").addEventListener("input", (e) => {
      player.pause(); $("play").textContent = "Play"; player.seek(Number(e.target.value));
    });
    $("speed").addEventListener("change", (e) => player.setSpeed(Number(e.target.value)));
    $("overlay-toggle").addEventListener("change", (e) => { player.overlay = e.target.checked; player.draw(); });
    $("overlay-opacity").addEventListener("input", (e) => { player.opacity = Number(e.target.value) / 100; player.draw(); });
  }

  function fillReport(d) {
    const r = d.report;
    const signed = r && (r.status === "signed" || r.status === "amended");
    $("report-status").textContent = r ? r.status + " · v" + r.version : "no report yet";
    $("report-status").className = "status report-" + (r ? r.status : "none");
    $("structured-text").value = r ? r.structured_text : "";
    $("narrative-text").value = r ? r.narrative_text : "";
    const g = $("grounding");
    Echo.clear(g);
    if (r) {
      // a person's text says so and carries advice only, never the language model's verdict
      const badge = r.typed_by_person ? "verdict verdict-advisory" : "verdict verdict-" + r.grounding_verdict;
      g.appendChild(Echo.el("span", r.grounding_label, badge));
      if (r.grounding_reasons.length) {
        const reasons = Echo.el("ul", null, "grounding-reasons small");
        for (const reason of r.grounding_reasons) reasons.appendChild(Echo.el("li", String(reason)));
        g.appendChild(reasons);
      }
    }
    const canEdit = role === "cardiologist" && r !== null;
    for (const id of ["structured-text", "narrative-text"]) $(id).readOnly = !canEdit;
    $("save-report").hidden = !canEdit;
    $("sign-report").hidden = !canEdit || signed;
    $("amend-row").hidden = !canEdit || !signed;
    $("save-report").textContent = signed ? "Save amendment (signs a new version)" : "Save draft";
    $("sign-note").textContent = role === "cardiologist"
      ? (signed ? "Signed by " + r.signed_by + " at " + r.signed_at + ". A change makes an amended version." : "")
      : "Only a cardiologist can edit and sign the report.";
    const list = $("version-list");
    Echo.clear(list);
    for (const v of d.versions.slice().reverse()) {
      const li = Echo.el("li");
      const button = Echo.el("button", "v" + v.version + " · " + v.status, "link");
      button.type = "button";
      button.addEventListener("click", () => showVersion(v));
      li.appendChild(button);
      const who = v.signed_by ? " signed by " + v.signed_by : v.author ? " by " + v.author : " (automated draft)";
      li.appendChild(document.createTextNode(who + " · " + new Date(v.created_at).toLocaleString()));
      if (v.amendment_reason) li.appendChild(Echo.el("div", "Reason: " + v.amendment_reason, "small"));
      list.appendChild(li);
    }
  }

  function showVersion(v) {
    const view = $("version-view");
    view.hidden = false;
    view.textContent = "Version " + v.version + " (" + v.status + ")\n\n" + v.structured_text +
      (v.narrative_text ? "\n\n" + v.narrative_text : "");
  }

  function fillExport(e) {
    $("fhir-status").textContent = e.fhir_status || "none";
    const delivery = $("fhir-delivery");
    delivery.textContent = e.fhir_delivery.label;
    delivery.dataset.state = e.fhir_delivery.state;
    const state = $("export-state");
    if (!e.destinations_configured.length) state.textContent = "no PACS destination configured: no DICOM is sent";
    else state.textContent = e.running ? "export running…" : "destinations: " + e.destinations_configured.join(", ");
    const list = $("export-list");
    Echo.clear(list);
    for (const a of e.artifacts) {
      const parts = a.destinations.map((d) => d.destination + ": " + d.state + (d.last_error ? " (" + d.last_error + ")" : ""));
      const version = a.report_version ? " v" + a.report_version : "";
      list.appendChild(Echo.el("li", a.kind.toUpperCase() + version + (parts.length ? " → " + parts.join("; ") : "")));
    }
    clearTimeout(exportTimer);
    const busy = e.running || ["sending", "retrying"].includes(e.fhir_delivery.state);
    if (busy) exportTimer = setTimeout(pollExport, 2000);
  }

  async function pollExport() {
    try { fillExport(await Echo.getJSON("/api/studies/" + studyId + "/export", true)); } catch (_) { /* next poll */ }
  }

  async function submitReport(sign) {
    const msg = $("report-message");
    const body = {
      base_version: detail.report ? detail.report.version : 0,
      structured_text: $("structured-text").value,
      narrative_text: $("narrative-text").value,
      amendment_reason: $("amendment-reason").value,
    };
    const url = "/api/studies/" + studyId + "/report" + (sign ? "/sign" : "");
    msg.textContent = sign ? "Signing…" : "Saving…";
    const response = await Echo.api(url, { method: "POST", json: body });
    const data = await response.json();
    if (!response.ok) { msg.textContent = data.error || "HTTP " + response.status; return; }
    msg.textContent = sign || data.report ? "Signed." : "Saved.";
    $("amendment-reason").value = "";
    await load(false);
  }

  function bubble(role, text) {
    const div = Echo.el("div", null, "bubble " + role);
    div.appendChild(Echo.el("div", role === "user" ? "You" : "Answer", "who small"));
    const body = Echo.el("div", text, "text");
    div.appendChild(body);
    $("chat-log").appendChild(div);
    $("chat-log").scrollTop = $("chat-log").scrollHeight;
    return body;
  }

  // "Based on: ..." under an answer: the study facts and the knowledge entries (with their
  // sources) it was composed from, as the server stored them with the message
  function basedOn(body, grounding) {
    if (!grounding || (!(grounding.facts || []).length && !(grounding.entries || []).length)) return;
    const old = body.parentNode.querySelector(".based-on");
    if (old) old.remove();
    const box = Echo.el("div", null, "based-on small");
    box.appendChild(Echo.el("span", "Based on: ", "who"));
    const facts = (grounding.facts || []).map((f) => f.label || f.key);
    if (facts.length) box.appendChild(Echo.el("span", "study facts: " + facts.join(", ") + ". ", "based-facts"));
    const list = Echo.el("ul", null, "based-entries");
    for (const e of grounding.entries || []) {
      const li = Echo.el("li", e.title + " (" + e.source + ")");
      li.dataset.entry = e.id;
      list.appendChild(li);
    }
    if ((grounding.entries || []).length) {
      box.appendChild(Echo.el("span", "knowledge base:", "based-label"));
      box.appendChild(list);
    }
    body.parentNode.appendChild(box);
  }

  async function loadChat() {
    const data = await Echo.getJSON("/api/studies/" + studyId + "/chat");
    Echo.clear($("chat-log"));
    for (const m of data.messages) {
      const body = bubble(m.role, m.content);
      if (m.role === "assistant") basedOn(body, m.grounding);
    }
  }

  async function ask(question) {
    bubble("user", question);
    const answer = bubble("assistant", "");
    answer.classList.add("streaming");
    const response = await Echo.api("/api/studies/" + studyId + "/chat", { method: "POST", json: { question } });
    if (!response.ok || !response.body) {
      answer.textContent = "The question was refused (HTTP " + response.status + ").";
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        const payload = data ? JSON.parse(data) : {};
        if (event === "chunk") { answer.textContent += payload.text; answer.dataset.chunks = String(Number(answer.dataset.chunks || 0) + 1); }
        else if (event === "replace") { answer.textContent = payload.text; answer.dataset.replaced = "true"; }
        else if (event === "error") answer.textContent += "\n[" + payload.error + "]";
        else if (event === "done") { basedOn(answer, payload); answer.classList.remove("streaming"); answer.dataset.done = "true"; }
      }
      $("chat-log").scrollTop = $("chat-log").scrollHeight;
    }
  }

  async function load(first) {
    detail = await Echo.getJSON("/api/studies/" + studyId);
    $("study-status").textContent = detail.status_label;
    $("study-status").className = "status status-" + detail.status;
    if (detail.loop) fillMeasurements(detail.loop);
    fillReport(detail);
    fillExport(detail.export);
    if (first && detail.loop) await setUpCine(detail.loop);
  }

  $("save-report").addEventListener("click", () => submitReport(false));
  $("sign-report").addEventListener("click", () => submitReport(true));
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("chat-input").value.trim();
    if (!q) return;
    $("chat-input").value = "";
    ask(q).catch((error) => bubble("assistant", "The answer failed: " + error.message));
  });
  load(true).then(loadChat).catch((error) => { $("report-message").textContent = "Cannot load the study: " + error.message; });
})();
