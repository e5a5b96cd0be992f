/* Shared helpers. Every string from the server goes into the page with textContent. */
"use strict";

const Echo = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fmt(value, unit, digits = 1) {
    if (value === null || value === undefined) return "—";
    return Number(value).toFixed(digits) + (unit ? " " + unit : "");
  }

  async function api(url, options = {}) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options);
    opts.headers = Object.assign({ "Accept": "application/json" }, opts.headers);
    if (opts.method && opts.method !== "GET") opts.headers["X-CSRF-Token"] = csrf();
    if (opts.json !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(opts.json);
      delete opts.json;
    }
    const response = await fetch(url, opts);
    if (response.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      throw new Error("not logged in");
    }
    return response;
  }

  async function getJSON(url, background = false) {
    const response = await api(url, background ? { headers: { "X-Echo-Background": "1" } } : {});
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  return { el, clear, fmt, api, getJSON, csrf };
})();
