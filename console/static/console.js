// Progressive enhancement: the page already shows the state at load time;
// this applies live changes from /events (server-sent events). Text is set
// with textContent only, never as markup.
(function () {
  "use strict";
  if (!window.EventSource) return;
  var source = new EventSource("/events");
  // Lets a test (and a curious operator) see that live updates are on.
  source.onopen = function () { document.documentElement.setAttribute("data-live", "on"); };
  source.onerror = function () { document.documentElement.setAttribute("data-live", "off"); };
  function rowsFor(id) {
    var out = [];
    document.querySelectorAll("[data-device]").forEach(function (el) {
      if (el.getAttribute("data-device") === id) out.push(el);
    });
    return out;
  }
  source.addEventListener("device", function (e) {
    var d;
    try { d = JSON.parse(e.data); } catch (_) { return; }
    rowsFor(d.device).forEach(function (row) {
      var gate = row.querySelector(".gate");
      if (gate) {
        gate.setAttribute("data-state", d.state);
        gate.textContent = d.state;
      }
      var reason = row.querySelector(".gate-reason");
      if (reason) reason.textContent = d.reason + (d.detail ? " (" + d.detail + ")" : "");
    });
  });
  source.addEventListener("alert", function (e) {
    var a;
    try { a = JSON.parse(e.data); } catch (_) { return; }
    var list = document.getElementById("alerts");
    if (!list) return;
    var li = document.createElement("li");
    li.textContent = a.device + ": " + a.kind + (a.seq != null ? " at seq " + a.seq : "") + " — " + a.detail;
    list.insertBefore(li, list.firstChild);
  });
  source.addEventListener("lagged", function () { window.location.reload(); });
})();
