/* Shows a signup box's reply inline. Without JavaScript the box posts as a plain form. */
(function () {
  "use strict";

  function show(form, reply) {
    var error = form.querySelector(".nl-error");
    var email = form.querySelector(".nl-email");
    if (reply.ok) {
      var done = document.createElement("div");
      done.className = "nl-box nl-done";
      done.setAttribute("role", "status");
      var title = document.createElement("h3");
      title.textContent = reply.title;
      var text = document.createElement("p");
      text.textContent = reply.message;
      done.appendChild(title);
      done.appendChild(text);
      form.replaceWith(done);
      return;
    }
    error.textContent = reply.message;
    error.hidden = false;
    if (email && reply.field === "email") {
      email.setAttribute("aria-invalid", "true");
      email.focus();
    }
  }

  function submit(event) {
    var form = event.target;
    if (!form.matches || !form.matches("form[data-newsletter-box]") || !window.fetch) return;
    event.preventDefault();
    var button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json" },
      credentials: "omit"
    })
      .then(function (response) { return response.json(); })
      .then(function (reply) { show(form, reply); })
      .catch(function () { form.submit(); })
      .finally(function () { if (button) button.disabled = false; });
  }

  document.addEventListener("submit", submit);
})();
