/* mammoseg dashboard: live regions, action buttons, the upload form. No dependencies.
 *
 * <div data-live="/fragments/..." data-every="2">  re-rendered from the server every N s
 *                                                 (paused while the tab is hidden)
 * <button data-action="/api/v1/..." data-confirm="...">  POST with the session cookie
 *                                                 and X-Requested-With; the answer goes to
 *                                                 the next <output> in the same [data-actions]
 * <form data-upload>                              shows "Segmenting..." while it posts
 */
(function () {
  "use strict";

  var HEADERS = { "X-Requested-With": "mammoseg" };

  function toLogin() {
    window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  function refresh(el) {
    return fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: HEADERS })
      .then(function (r) {
        if (r.status === 401) { toLogin(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) { return; }
        el.innerHTML = html;
        var stamp = document.querySelector("[data-live-stamp]");
        if (stamp) { stamp.textContent = "updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function () { /* the node may be restarting: try again next tick */ });
  }

  function refreshAll() {
    document.querySelectorAll("[data-live]").forEach(refresh);
  }

  document.querySelectorAll("[data-live]").forEach(function (el) {
    var every = Math.max(1, parseFloat(el.getAttribute("data-every") || "3")) * 1000;
    window.setInterval(function () { if (!document.hidden) { refresh(el); } }, every);
  });

  function describe(body) {
    if (!body) { return ""; }
    if (typeof body.detail === "string" && body.title) { return body.detail; }
    if (body.destination !== undefined && body.ok !== undefined) {
      return (body.ok ? "OK: " : "failed: ") + body.detail + " (" + Math.round(body.seconds * 1000) + " ms)";
    }
    if (body.state) { return "job " + body.id + " is now " + body.state; }
    if (body.retried !== undefined && body.skipped) {
      return "retried " + body.retried + " of " + body.matched + " matching jobs" +
        (body.skipped.length ? "; skipped " + body.skipped.length + ": " + body.skipped[0].reason : "");
    }
    return "";
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (!button) { return; }
    event.preventDefault();
    var question = button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { return; }
    var group = button.closest("[data-actions]") || button.parentElement;
    var output = group.querySelector("output");
    button.disabled = true;
    if (output) { output.className = "result"; output.textContent = "working..."; }
    fetch(button.getAttribute("data-action"), { method: "POST", credentials: "same-origin", headers: HEADERS })
      .then(function (r) {
        return r.json().catch(function () { return null; }).then(function (body) {
          var ok = r.ok && !(body && body.ok === false);
          if (output) {
            output.className = "result " + (ok ? "ok" : "bad");
            output.textContent = describe(body) || (r.status + " " + r.statusText);
          }
          if (r.ok) { refreshAll(); }
        });
      })
      .catch(function (err) {
        if (output) { output.className = "result bad"; output.textContent = String(err); }
      })
      .then(function () { button.disabled = false; });
  });

  document.querySelectorAll("form[data-upload]").forEach(function (form) {
    form.querySelectorAll("input[type=file]").forEach(function (input) {
      input.addEventListener("change", function () {
        if (!input.files || !input.files.length) { return; }
        form.querySelectorAll("input[type=file]").forEach(function (other) {
          if (other !== input) { other.value = ""; }
        });
        form.classList.add("is-busy");
        form.submit();
      });
    });
  });
})();
