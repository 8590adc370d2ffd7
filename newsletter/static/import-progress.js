/* An import's page while it runs: its figures are fetched again every two seconds and put in
   place, so the page never reloads under the reader (nor moves a screen reader to its top). */
(function () {
  "use strict";
  var live = document.querySelector("[data-import-live]");

  function poll() {
    if (!live || !live.hasAttribute("data-working")) return;
    setTimeout(function () {
      fetch(location.href, { credentials: "same-origin" })
        .then(function (response) { return response.text(); })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html")
            .querySelector("[data-import-live]");
          if (!fresh) return;
          live.innerHTML = fresh.innerHTML;
          if (!fresh.hasAttribute("data-working")) live.removeAttribute("data-working");
          poll();
        }, poll);
    }, 2000);
  }

  poll();
})();
