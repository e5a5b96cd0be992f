/* Model-loading banner: while the node loads (or, on a first run, converts) its models, says
   so, polling /api/status/models; shows "Ready" briefly once they are loaded, then hides. */
"use strict";

(() => {
  const banner = document.getElementById("model-banner");
  if (!banner) return;
  const POLL_MS = 2000;
  const FAILED_POLL_MS = 30000;
  const READY_SHOWN_MS = 4000;
  let sawLoading = false;

  function show(status) {
    banner.textContent = status.message;
    banner.className = status.state === "failed" ? "banner demo" : "banner info";
    banner.hidden = false;
  }

  async function poll() {
    let status;
    try {
      status = await Echo.getJSON("/api/status/models", true);
    } catch (err) {
      window.setTimeout(poll, FAILED_POLL_MS);
      return;
    }
    banner.dataset.state = status.state;
    if (status.state === "loading" || status.state === "failed") {
      sawLoading = true;
      show(status);
      window.setTimeout(poll, status.state === "failed" ? FAILED_POLL_MS : POLL_MS);
    } else if (status.state === "ready" && sawLoading) {
      show(status);
      window.setTimeout(() => { banner.hidden = true; }, READY_SHOWN_MS);
    } else {
      banner.hidden = true; // ready from the start, or a web-only process ("none")
    }
  }

  poll();
})();
