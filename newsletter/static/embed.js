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

  function fieldsOf(form) {
    var data = { newsletter: [] };
    new FormData(form).forEach(function (value, name) {
      if (name === "newsletter") data.newsletter.push(value);
      else data[name] = value;
    });
    return data;
  }

  function submit(event) {
    var form = event.target;
    if (!form.matches || !form.matches("form[data-newsletter-box]") || !window.fetch) return;
    event.preventDefault();
    var button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    // A JSON body makes the browser ask first (CORS preflight): on a site the service does
    // not list, nothing is posted twice, and the form falls back to a plain submit.
    fetch(form.action, {
      method: "POST",
      body: JSON.stringify(fieldsOf(form)),
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      credentials: "omit"
    })
      .then(function (response) { return response.json(); })
      .then(function (reply) { show(form, reply); })
      .catch(function () { form.submit(); })
      .finally(function () { if (button) button.disabled = false; });
  }

  document.addEventListener("submit", submit);
})();
