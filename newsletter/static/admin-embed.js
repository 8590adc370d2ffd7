/* The admin's snippet section: the preview follows the choices at once, and a button copies
   the snippet. Without JavaScript the form's button shows the same page. */
(function () {
  "use strict";
  var controls = document.querySelector("[data-embed-controls]");
  var result = document.querySelector("[data-embed-result]");

  function refresh() {
    var query = new URLSearchParams(new FormData(controls));
    query.set("fragment", "1");
    var address = controls.action.split("?")[0] + "?" + query.toString();
    fetch(address, { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error(response.status);
        return response.text();
      })
      .then(function (html) {
        result.innerHTML = html;
        query.delete("fragment");
        history.replaceState(null, "", controls.action.split("?")[0] + "?" + query.toString());
        showCopy();
      })
      .catch(function () { controls.submit(); });
  }

  function showCopy() {
    var button = result.querySelector("[data-copy]");
    if (button && navigator.clipboard) button.hidden = false;
  }

  function copy(event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var code = document.getElementById(button.getAttribute("data-copy"));
    var status = result.querySelector(".copy-status");
    navigator.clipboard.writeText(code.textContent).then(
      function () { status.textContent = status.getAttribute("data-copied"); },
      function () {
        var range = document.createRange();
        range.selectNodeContents(code);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        status.textContent = status.getAttribute("data-not-copied");
      }
    );
  }

  if (!controls || !result) return;
  controls.addEventListener("change", function (event) {
    if (event.target.name !== "site") refresh();
  });
  controls.addEventListener("submit", function (event) {
    event.preventDefault();
    refresh();
  });
  result.addEventListener("click", copy);
  showCopy();
})();
