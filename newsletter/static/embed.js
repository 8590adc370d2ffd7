/* Signup boxes answered in place. Each <form data-newsletter-box> posts as a plain form without
   JavaScript; with it, this sends the form with fetch and shows the reply inside the box. Many
   boxes on one page each work on their own; pasting the script twice runs it once. */
(function () {
  "use strict";
  if (window.newsletterBoxes) return;
  window.newsletterBoxes = true;

  var WAIT = "Too many signups from your network just now. Please try again in a minute.";
  var TIMEOUT = 15000;
  var counter = 0;
  var widgetLoad = null;

  function boxes() {
    return document.querySelectorAll("form[data-newsletter-box]");
  }

  function service(form) {
    // The service's address: the form posts to <service>/subscribe.
    return form.action.replace(/\/subscribe(?:[?#].*)?$/, "");
  }

  function part(form, selector, make) {
    var found = form.querySelector(selector);
    if (found || !make) return found;
    found = make();
    form.appendChild(found);
    return found;
  }

  function uniqueIds(form) {
    // The same snippet pasted twice: give the second box's ids (and what names them) new ones.
    Array.prototype.forEach.call(form.querySelectorAll("[id]"), function (el) {
      var old = el.id;
      if (document.getElementById(old) === el) return;
      var id = old + "-" + ++counter;
      el.id = id;
      Array.prototype.forEach.call(form.querySelectorAll("[for], [aria-describedby], [aria-labelledby]"), function (other) {
        ["for", "aria-describedby", "aria-labelledby"].forEach(function (name) {
          var value = other.getAttribute(name);
          if (value) other.setAttribute(name, value.split(/\s+/).map(function (v) { return v === old ? id : v; }).join(" "));
        });
      });
    });
    if (form.id && document.getElementById(form.id) !== form) form.id += "-" + ++counter;
  }

  function prepare(form) {
    if (form.newsletterReady) return;
    form.newsletterReady = true;
    uniqueIds(form);
    var error = part(form, ".nl-error", function () {
      var p = document.createElement("p");
      p.className = "nl-error";
      p.hidden = true;
      return p;
    });
    if (!error.id) error.id = "nl-error-" + ++counter;
    // Present from the start, so that screen readers announce what is written into it later.
    part(form, ".nl-done", function () {
      var done = document.createElement("div");
      done.className = "nl-done";
      done.setAttribute("role", "status");
      done.setAttribute("aria-live", "polite");
      done.tabIndex = -1;
      return done;
    });
    if (form.hasAttribute("data-altcha")) addWidget(form);
  }

  function lang(form) {
    return form.getAttribute("data-lang") || document.documentElement.lang || "en";
  }

  function loadScript(src, module) {
    return new Promise(function (resolve, reject) {
      var script = document.createElement("script");
      if (module) script.type = "module";
      script.src = src;
      script.onload = resolve;
      script.onerror = reject;
      document.head.appendChild(script);
    });
  }

  function worker(url) {
    // A page of another site may not start a worker from our address; a tiny one of its own
    // may load ours.
    if (new URL(url, location.href).origin === location.origin) return new Worker(url);
    var code = "importScripts(" + JSON.stringify(url) + ");";
    return new Worker(URL.createObjectURL(new Blob([code], { type: "text/javascript" })));
  }

  function loadWidget(base) {
    // The ALTCHA widget, from our own static files, once per page and only where a box asks.
    if (widgetLoad) return widgetLoad;
    var link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = base + "/static/altcha/altcha.css";
    document.head.appendChild(link);
    widgetLoad = loadScript(base + "/static/altcha/altcha.min.js", true)
      .then(function () { return loadScript(base + "/static/altcha/uk.umd.js"); })
      .then(function () {
        window.$altcha.algorithms.set("PBKDF2/SHA-256", function () {
          return worker(base + "/static/altcha/pbkdf2.js");
        });
      });
    return widgetLoad;
  }

  function addWidget(form) {
    if (form.querySelector("altcha-widget")) return;
    var base = service(form);
    var place = part(form, ".nl-altcha", function () {
      var div = document.createElement("div");
      div.className = "nl-altcha";
      return div;
    });
    // The word for readers without JavaScript goes: the widget takes its place.
    Array.prototype.forEach.call(form.querySelectorAll("[data-nl-noscript]"), function (note) {
      note.hidden = true;
    });
    var widget = document.createElement("altcha-widget");
    widget.setAttribute("challenge", base + "/api/v1/challenge");
    widget.setAttribute("name", "altcha");
    widget.setAttribute("auto", "onfocus");
    widget.setAttribute("language", lang(form));
    place.appendChild(widget);
    return loadWidget(base);
  }

  function proven(form) {
    // Resolves once the box's proof of work is done (at once where none is asked for).
    var widget = form.querySelector("altcha-widget");
    if (!widget) return Promise.resolve();
    return loadWidget(service(form)).then(function () {
      if (!widget.getState) return customElements.whenDefined("altcha-widget");
    }).then(function () {
      var state = widget.getState();
      if (state === "verified") return;
      return new Promise(function (resolve, reject) {
        widget.addEventListener("statechange", function changed(event) {
          var now = event.detail && event.detail.state;
          if (now === "verified" || now === "error" || now === "expired") {
            widget.removeEventListener("statechange", changed);
            if (now === "verified") resolve();
            else reject(new Error("altcha " + now));
          }
        });
        if (state !== "verifying") widget.verify();
      });
    });
  }

  function fields(form) {
    var data = { newsletter: [] };
    new FormData(form).forEach(function (value, name) {
      if (name === "newsletter") data.newsletter.push(value);
      else data[name] = value;
    });
    if (form.getAttribute("data-lang")) data.lang = form.getAttribute("data-lang");
    return data;
  }

  function describedBy(el, id, on) {
    var ids = (el.getAttribute("aria-describedby") || "").split(/\s+/).filter(function (v) {
      return v && v !== id;
    });
    if (on) ids.push(id);
    if (ids.length) el.setAttribute("aria-describedby", ids.join(" "));
    else el.removeAttribute("aria-describedby");
  }

  function clearError(form) {
    var error = form.querySelector(".nl-error");
    error.hidden = true;
    error.textContent = "";
    error.removeAttribute("role");
    Array.prototype.forEach.call(form.querySelectorAll("[aria-invalid]"), function (el) {
      el.removeAttribute("aria-invalid");
      describedBy(el, error.id, false);
    });
  }

  function showError(form, message, field) {
    var error = form.querySelector(".nl-error");
    error.textContent = message;
    error.hidden = false;
    var target = null;
    if (field === "email") target = form.querySelector("input[name=email]");
    else if (field === "newsletter") target = form.querySelector("input[name=newsletter]:not([type=hidden])");
    else if (field === "frequency") target = form.querySelector("select[name=frequency]");
    if (target) {
      // Read with the field it belongs to when focus comes back there.
      target.setAttribute("aria-invalid", "true");
      describedBy(target, error.id, true);
      target.focus();
    } else {
      error.setAttribute("role", "alert");
    }
    if (field === "altcha") {
      var widget = form.querySelector("altcha-widget");
      if (widget && widget.reset) widget.reset();
      else addWidget(form);
    }
  }

  function showDone(form, title, text) {
    var done = form.querySelector(".nl-done");
    Array.prototype.forEach.call(form.children, function (child) {
      if (child !== done) child.hidden = true;
    });
    var heading = document.createElement("p");
    heading.className = "nl-done-title";
    heading.textContent = title;
    var body = document.createElement("p");
    body.className = "nl-done-text";
    body.textContent = text;
    done.textContent = "";
    done.appendChild(heading);
    done.appendChild(body);
    done.focus();
  }

  function send(form) {
    var controller = window.AbortController ? new AbortController() : null;
    var timer = controller && setTimeout(function () { controller.abort(); }, TIMEOUT);
    // JSON makes the browser ask first (CORS preflight): on a site the service does not list,
    // nothing is sent, and the plain post below signs the reader up once.
    return fetch(form.action, {
      method: "POST",
      body: JSON.stringify(fields(form)),
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      credentials: "omit",
      signal: controller ? controller.signal : undefined
    }).then(function (response) {
      clearTimeout(timer);
      if (response.status === 429) return { status: 429 };
      return response.json().then(function (reply) {
        return { status: response.status, reply: reply };
      });
    });
  }

  function answer(form, result) {
    var reply = result.reply || {};
    if (result.status === 429) {
      showError(form, form.getAttribute("data-nl-wait") || WAIT, null);
    } else if (reply.ok) {
      showDone(form, reply.title, reply.message);
    } else if (reply.message) {
      // A refused box keeps its solved challenge no longer: the next try solves a fresh one.
      var widget = form.querySelector("altcha-widget");
      if (widget && widget.reset && reply.field !== "altcha") widget.reset();
      showError(form, reply.message, reply.field);
    } else {
      throw new Error("no reply");
    }
  }

  function submit(event) {
    var form = event.target;
    if (!form.matches || !form.matches("form[data-newsletter-box]")) return;
    if (!window.fetch || !window.FormData || !window.Promise) return;
    event.preventDefault();
    if (form.getAttribute("aria-busy") === "true") return;
    prepare(form);
    var button = form.querySelector("button[type=submit], button:not([type])");
    form.setAttribute("aria-busy", "true");
    if (button) button.disabled = true;
    clearError(form);
    function settle() {
      form.removeAttribute("aria-busy");
      if (button) button.disabled = false;
    }
    proven(form).then(function () {
      return send(form)
        .then(function (result) { answer(form, result); })
        .catch(function () {
          // The service could not be reached or read (offline, a site not listed): the form
          // posts itself, and the reader gets the service's page.
          form.submit();
        });
    }, function () {
      // The widget shows what went wrong with the proof of work; the reader may try again.
      return undefined;
    }).then(settle, settle);
  }

  function start() {
    Array.prototype.forEach.call(boxes(), prepare);
  }

  document.addEventListener("submit", submit);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
