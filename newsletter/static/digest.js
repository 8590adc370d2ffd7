// The admin's digest pages, made livelier where JavaScript runs; both work without it.
// - A digest being sent: the figures follow the ledger, polled every 2 s, until it is done.
// - A draft: up and down buttons beside each item, which renumber the position inputs.
(function () {
  "use strict";

  var EVERY = 2000;

  function number(value) {
    return Number(value).toLocaleString("en-US");
  }

  // The same wording as the page the server renders.
  function span(seconds) {
    var total = Math.round(seconds);
    if (total < 90) return total + " s";
    var minutes = Math.round(total / 60);
    if (minutes < 90) return minutes + " min";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function watch(box) {
    var url = box.getAttribute("data-progress-url");
    var shown = box.getAttribute("data-status");
    var bar = box.querySelector("[role=progressbar]");

    function set(name, text) {
      var el = box.querySelector('[data-figure="' + name + '"]');
      if (el) el.textContent = text;
    }

    function show(p) {
      var total = p.recipients;
      var done = p.sent + p.failed + p.skipped;
      var percent = total > 0 ? Math.min(100, Math.floor((done * 100) / total)) : p.finished ? 100 : 0;
      ["sent", "failed", "skipped"].forEach(function (name) {
        var part = box.querySelector('[data-bar="' + name + '"]');
        if (part) part.style.width = (total > 0 ? (100 * p[name]) / total : 0).toFixed(2) + "%";
      });
      bar.setAttribute("aria-valuenow", String(percent));
      bar.setAttribute(
        "aria-valuetext",
        percent + "%: " + number(done) + " of " + number(total) + " done"
      );
      set("percent", String(percent));
      ["queued", "retrying", "sent", "failed", "skipped", "unsubscribed_since"].forEach(
        function (name) {
          set(name, number(p[name]));
        }
      );
      set("rate", p.rate ? p.rate.toFixed(1) + " messages/s" : "\u2014");
      set("left", p.seconds_left != null ? "about " + span(p.seconds_left) : "\u2014");
    }

    function poll() {
      if (document.hidden) {
        window.setTimeout(poll, EVERY);
        return;
      }
      fetch(url, { headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin" })
        .then(function (response) {
          var type = response.headers.get("Content-Type") || "";
          // Signed out meanwhile (the sign-in page came back), or gone: stop asking.
          if (!response.ok || type.indexOf("application/json") === -1) return null;
          return response.json();
        })
        .then(
          function (p) {
            if (!p) return;
            show(p);
            if (p.status !== shown) {
              // Paused, resumed, sent or cancelled: the page's buttons and figures change with it.
              window.location.reload();
              return;
            }
            if (!p.finished) window.setTimeout(poll, EVERY);
          },
          function () {
            // The network dropped: try again on the next beat.
            window.setTimeout(poll, EVERY);
          }
        );
    }

    window.setTimeout(poll, EVERY);
  }

  function reorder(list) {
    function renumber() {
      Array.prototype.forEach.call(list.querySelectorAll('input[name^="position-"]'), function (input, i) {
        input.value = String(i + 1);
      });
    }

    function button(label, text, move) {
      var b = document.createElement("button");
      b.type = "button";
      b.className = "move";
      b.textContent = text;
      b.setAttribute("aria-label", label);
      b.addEventListener("click", function () {
        var item = b.closest("li");
        if (move(item)) {
          renumber();
          b.focus();
        }
      });
      return b;
    }

    Array.prototype.forEach.call(list.children, function (item) {
      var title = (item.querySelector("strong") || item).textContent.trim();
      var moves = document.createElement("span");
      moves.className = "moves";
      moves.appendChild(
        button("Move up: " + title, "\u2191", function (li) {
          var before = li.previousElementSibling;
          if (!before) return false;
          list.insertBefore(li, before);
          return true;
        })
      );
      moves.appendChild(
        button("Move down: " + title, "\u2193", function (li) {
          var after = li.nextElementSibling;
          if (!after) return false;
          list.insertBefore(after, li);
          return true;
        })
      );
      item.insertBefore(moves, item.firstChild);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.querySelector("[data-progress-url]");
    if (box && window.fetch) watch(box);
    Array.prototype.forEach.call(document.querySelectorAll("ol[data-reorder]"), reorder);
  });
})();
