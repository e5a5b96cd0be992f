/* The cine player (source frames + LV outline on a canvas, at the loop's own frame rate) and
   the LV area curve. Frames come from the API as JPEGs, outlines as one contour JSON. */
"use strict";

class CinePlayer {
  constructor(options) {
    this.canvas = options.canvas;
    this.ctx = this.canvas.getContext("2d");
    this.n = options.frameCount;
    this.frameTimeMs = options.frameTimeMs;
    this.contours = options.contours;
    this.ed = new Set(options.edFrames || []);
    this.es = new Set(options.esFrames || []);
    this.onFrame = options.onFrame || (() => {});
    this.images = [];
    this.index = 0;
    this.playing = false;
    this.speed = 1;
    this.overlay = true;
    this.opacity = 0.45;
    this.startTime = 0;
    this.startIndex = 0;
    this.frameUrl = options.frameUrl;
  }

  load() {
    const pending = [];
    for (let i = 0; i < this.n; i++) {
      const img = new Image();
      pending.push(new Promise((resolve, reject) => {
        img.onload = resolve;
        img.onerror = () => reject(new Error("frame " + i + " did not load"));
      }));
      img.src = this.frameUrl(i);
      this.images.push(img);
    }
    return Promise.all(pending).then(() => {
      const first = this.images[0];
      this.canvas.width = first.naturalWidth;
      this.canvas.height = first.naturalHeight;
      this.draw();
    });
  }

  draw() {
    const ctx = this.ctx;
    const img = this.images[this.index];
    ctx.drawImage(img, 0, 0, this.canvas.width, this.canvas.height);
    const points = this.contours && this.contours.frames[this.index];
    if (this.overlay && points && points.length >= 6) {
      const sx = this.canvas.width / this.contours.width;
      const sy = this.canvas.height / this.contours.height;
      ctx.beginPath();
      ctx.moveTo(points[0] * sx, points[1] * sy);
      for (let k = 2; k < points.length; k += 2) ctx.lineTo(points[k] * sx, points[k + 1] * sy);
      ctx.closePath();
      ctx.fillStyle = "rgba(255, 64, 64, " + this.opacity + ")";
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "rgba(255, 210, 0, " + Math.min(1, this.opacity + 0.4) + ")";
      ctx.stroke();
    }
    const phase = this.ed.has(this.index) ? "ED" : this.es.has(this.index) ? "ES" : "";
    if (phase) {
      ctx.font = "bold 16px sans-serif";
      ctx.fillStyle = phase === "ED" ? "#4fc3f7" : "#ffb74d";
      ctx.fillText(phase, 10, 22);
    }
    this.canvas.dataset.frame = String(this.index);
    this.canvas.dataset.overlay = this.overlay ? "on" : "off";
    this.onFrame(this.index, phase);
  }

  seek(index) {
    this.index = ((index % this.n) + this.n) % this.n;
    this.startIndex = this.index;
    this.startTime = performance.now();
    this.draw();
  }

  step(delta) { this.pause(); this.seek(this.index + delta); }

  setSpeed(speed) { this.speed = speed; this.seek(this.index); }

  play() {
    if (this.playing) return;
    this.playing = true;
    this.startIndex = this.index;
    this.startTime = performance.now();
    // A timer, not requestAnimationFrame: rAF is paused or throttled whenever the browser
    // decides the page is not being painted (background tab, headless, busy machine), and a
    // cine must keep its real frame rate. The frame shown comes from the elapsed time, so a
    // late tick skips frames instead of slowing the loop down.
    const tick = () => {
      if (!this.playing) return;
      const elapsed = (performance.now() - this.startTime) * this.speed;
      const next = (this.startIndex + Math.floor(elapsed / this.frameTimeMs)) % this.n;
      if (next !== this.index) { this.index = next; this.draw(); }
      setTimeout(tick, Math.max(4, this.frameTimeMs / this.speed / 2));
    };
    setTimeout(tick, 0);
  }

  pause() { this.playing = false; }
}

function drawAreaCurve(canvas, curve, current) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const pad = { l: 48, r: 10, t: 26, b: 26 };
  ctx.clearRect(0, 0, w, h);
  const values = curve.values;
  if (!values.length) return;
  const n = values.length;
  const lo = Math.min(...values), hi = Math.max(...values);
  const span = hi - lo || 1;
  const x = (i) => pad.l + (n === 1 ? 0 : (i / (n - 1)) * (w - pad.l - pad.r));
  const y = (v) => pad.t + (1 - (v - lo) / span) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#555"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, h - pad.b); ctx.lineTo(w - pad.r, h - pad.b); ctx.stroke();
  ctx.fillStyle = "#aaa"; ctx.font = "11px sans-serif";
  ctx.fillText(hi.toFixed(1), 4, pad.t + 4);
  ctx.fillText(lo.toFixed(1), 4, h - pad.b);
  ctx.fillText(curve.unit, 4, h / 2);
  ctx.fillText("frame", w - pad.r - 30, h - 6);
  for (const beat of curve.beats) {  // shade each beat, label its EF
    const x0 = x(beat.ed_frame), x1 = x(beat.next_ed_frame ?? beat.es_frame);
    ctx.fillStyle = "rgba(79, 195, 247, 0.08)";
    ctx.fillRect(x0, pad.t, Math.max(1, x1 - x0), h - pad.t - pad.b);
    ctx.fillStyle = "#ddd";
    const label = beat.ef_percent == null ? "EF —" : "EF " + beat.ef_percent.toFixed(1) + "%";
    ctx.fillText(label, x0 + 2, pad.t - 8);
  }
  ctx.strokeStyle = "#e57373"; ctx.lineWidth = 2;
  ctx.beginPath();
  values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  ctx.stroke();
  const marker = (i, up, color) => {
    const px = x(i), py = y(values[i]);
    ctx.fillStyle = color; ctx.beginPath();
    if (up) { ctx.moveTo(px, py - 9); ctx.lineTo(px - 5, py - 1); ctx.lineTo(px + 5, py - 1); }
    else { ctx.moveTo(px, py + 9); ctx.lineTo(px - 5, py + 1); ctx.lineTo(px + 5, py + 1); }
    ctx.fill();
  };
  for (const i of curve.ed) if (i < n) marker(i, true, "#4fc3f7");
  for (const i of curve.es) if (i < n) marker(i, false, "#ffb74d");
  if (current !== undefined) {
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(x(current), pad.t); ctx.lineTo(x(current), h - pad.b); ctx.stroke();
  }
  canvas.onclick = (event) => {
    const rect = canvas.getBoundingClientRect();
    const px = (event.clientX - rect.left) * (w / rect.width);
    const i = Math.round(((px - pad.l) / (w - pad.l - pad.r)) * (n - 1));
    if (curve.onSeek) curve.onSeek(Math.max(0, Math.min(n - 1, i)));
  };
}
