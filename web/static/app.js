/* Pacific Lab dashboard: live parts of pages, without reloading.
 *
 * Every element with data-live="URL" is refreshed from URL (an HTML fragment
 * the server renders with the same templates as the page) every few seconds
 * while the tab is visible. Pages work without this script; it only keeps
 * them current. No framework, no network access beyond this site.
 */
(function () {
  "use strict";

  var root = document.documentElement;
  root.classList.add("js");
  var interval = parseInt(document.body.getAttribute("data-live-interval") || "2000", 10);
  var regions = Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
  var announcer = null;
  var stopped = false;

  function announce(text) {
    if (!announcer) {
      announcer = document.createElement("div");
      announcer.className = "sr-only";
      announcer.setAttribute("aria-live", "polite");
      announcer.setAttribute("role", "status");
      document.body.appendChild(announcer);
    }
    announcer.textContent = text;
  }

  function notice(text) {
    var box = document.getElementById("live-notice");
    if (!box) {
      box = document.createElement("div");
      box.id = "live-notice";
      box.className = "alert alert-warn live-notice";
      box.setAttribute("role", "alert");
      var main = document.getElementById("main");
      main.insertBefore(box, main.firstChild);
    }
    box.textContent = text;
  }

  /* What identifies a focused control across a refresh. */
  function focusKey(el) {
    if (el.id) { return "#" + el.id; }
    if (el.getAttribute("href")) { return "a[href='" + el.getAttribute("href") + "']"; }
    return null;
  }

  function atBottom(el) {
    return el.scrollHeight - el.scrollTop - el.clientHeight < 24;
  }

  function texts(el) {
    var out = {};
    Array.prototype.forEach.call(el.querySelectorAll("[data-announce]"), function (n) {
      out[n.getAttribute("data-announce")] = n.textContent.trim();
    });
    return out;
  }

  function swap(el, html) {
    var active = document.activeElement;
    var key = active && el.contains(active) ? focusKey(active) : null;
    var open = Array.prototype.map.call(el.querySelectorAll("details[open][id]"),
      function (d) { return d.id; });
    var scroller = el.querySelector("pre");
    var follow = el.hasAttribute("data-follow-bottom") && (!scroller || atBottom(scroller));
    var scrollTop = scroller ? scroller.scrollTop : 0;
    var before = texts(el);

    el.innerHTML = html;

    open.forEach(function (id) {
      var d = document.getElementById(id);
      if (d) { d.open = true; }
    });
    var pre = el.querySelector("pre");
    if (pre) { pre.scrollTop = follow ? pre.scrollHeight : scrollTop; }
    if (key) {
      var again = el.querySelector(key);
      if (again) { again.focus({ preventScroll: true }); }
    }
    var after = texts(el);
    Object.keys(after).forEach(function (k) {
      if (before[k] !== undefined && before[k] !== after[k]) { announce(after[k]); }
    });
    bindCopy(el);
  }

  function refresh(el) {
    if (el._busy || stopped) { return; }
    el._busy = true;
    fetch(el.getAttribute("data-live"), {
      headers: { "X-Live": "1" }, credentials: "same-origin", cache: "no-store",
      redirect: "error"
    }).then(function (r) {
      if (r.status === 401) {
        stopped = true;
        notice("Your session has ended. Reload the page to log in again.");
        return null;
      }
      if (!r.ok) {
        el.setAttribute("data-live-status", String(r.status));
        return null;
      }
      el.removeAttribute("data-live-status");
      return r.text();
    }).then(function (html) {
      if (html === null || html === undefined || html === el._last) { return; }
      el._last = html;
      swap(el, html);
    }).catch(function () {
      /* The server is restarting or the network is away: keep what is shown. */
    }).then(function () {
      el._busy = false;
    });
  }

  function tick() {
    if (document.hidden || stopped) { return; }
    regions.forEach(refresh);
  }

  function bindCopy(scope) {
    Array.prototype.forEach.call(scope.querySelectorAll("[data-copy]"), function (btn) {
      if (btn._bound) { return; }
      btn._bound = true;
      btn.addEventListener("click", function () {
        var source = document.getElementById(btn.getAttribute("data-copy"));
        if (!source || !navigator.clipboard) { return; }
        navigator.clipboard.writeText(source.textContent.trim()).then(function () {
          var label = btn.textContent;
          btn.textContent = "Copied";
          announce("Copied to the clipboard");
          setTimeout(function () { btn.textContent = label; }, 1500);
        });
      });
    });
  }

  regions.forEach(function (el) {
    var pre = el.querySelector("pre");
    if (pre && el.hasAttribute("data-follow-bottom")) { pre.scrollTop = pre.scrollHeight; }
  });
  bindCopy(document);
  if (regions.length) {
    setInterval(tick, interval);
    document.addEventListener("visibilitychange", tick);
  }
}());
