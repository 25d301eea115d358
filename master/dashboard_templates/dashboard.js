// The dashboard's script (master/dashboard.py). It is kept in a <script type="text/plain">
// and run once per page by the boot image's onload, since the UI inserts the dashboard with
// innerHTML. It refreshes the dashboard while it is shown and rolls repositories back.
window.jailfarmDashboard = window.jailfarmDashboard || (function () {
  "use strict";
  var timer = null;
  var busy = false;
  var auto = true;
  var status = null;

  function root() {
    return document.getElementById("jf-dashboard");
  }

  function paint() {
    var el = document.getElementById("jf-status");
    if (el && status) {
      el.textContent = status.text;
      el.className = "jf-status " + (status.ok ? "jf-ok" : "jf-bad");
    }
  }

  function show(text, ok) {
    status = {text: text, ok: ok};
    paint();
  }

  // Fetch the dashboard again and put it in place of the shown one, keeping the open
  // <details> open. The new copy's boot image calls attach() again.
  function refresh() {
    var shown = root();
    if (!shown || busy) {
      return Promise.resolve();
    }
    busy = true;
    var open = Array.prototype.map.call(
      shown.querySelectorAll("details[open][data-key]"),
      function (d) { return d.getAttribute("data-key"); });
    return fetch(shown.getAttribute("data-src"), {credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var box = document.createElement("div");
        box.innerHTML = html;
        var fresh = box.querySelector("#jf-dashboard");
        var current = root();
        if (!fresh || !current) {
          return;
        }
        Array.prototype.forEach.call(fresh.querySelectorAll("details[data-key]"), function (d) {
          if (open.indexOf(d.getAttribute("data-key")) >= 0) {
            d.open = true;
          }
        });
        current.replaceWith(fresh);
        attach();
      })
      .catch(function (e) { show("refresh failed: " + e.message, false); })
      .finally(function () { busy = false; });
  }

  // Start (again) refreshing every data-refresh seconds while the dashboard is on the page.
  function attach() {
    var shown = root();
    if (timer !== null) {
      clearInterval(timer);
      timer = null;
    }
    if (!shown) {
      return;
    }
    paint();
    var box = document.getElementById("jf-auto");
    if (box) {
      box.checked = auto;
    }
    timer = setInterval(function () {
      if (!root()) {
        clearInterval(timer);
        timer = null;
      } else if (auto && !document.hidden) {
        refresh();
      }
    }, Number(shown.getAttribute("data-refresh") || 10) * 1000);
  }

  // POST the farm's API (wwwapi.py) with the JSON content type it requires; it answers the
  // repository's generations, or {"error": ...} with 403 for those who may not.
  function rollback(button) {
    var repo = button.getAttribute("data-repo");
    var to = Number(button.getAttribute("data-to"));
    if (!window.confirm(button.textContent + " of " + repo + "? Its clients get g" + to +
                        "'s packages from now on.")) {
      return;
    }
    button.disabled = true;
    show(repo + ": making g" + to + " current...", true);
    fetch(button.getAttribute("data-url"), {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({to: to})
    })
      .then(function (response) {
        return response.json().then(function (body) {
          return {ok: response.ok, code: response.status, body: body};
        });
      })
      .then(function (answer) {
        if (answer.ok) {
          show(repo + ": g" + answer.body.current.number + " is current now", true);
        } else {
          show(repo + ": rollback refused (HTTP " + answer.code + "): " +
               (answer.body.error || ""), false);
        }
        return refresh();
      })
      .catch(function (e) {
        show(repo + ": rollback failed: " + e.message, false);
        button.disabled = false;
      });
  }

  return {
    attach: attach,
    refresh: refresh,
    rollback: rollback,
    setAuto: function (on) { auto = Boolean(on); }
  };
}());
