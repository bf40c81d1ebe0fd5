// usageplace-batch console: a little plain JavaScript (no build step, nothing fetched from elsewhere).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // A button with data-confirm asks before its form is sent.
  document.querySelectorAll("[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      if (!window.confirm(button.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
  // A form's submit button is disabled once sent: one click, one request.
  document.querySelectorAll("form[method=post]").forEach(function (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll("button[type=submit]").forEach(function (b) { b.disabled = true; });
    });
  });
  // An element with data-refresh="SECONDS" reloads the page after that long (a retry in progress).
  var refresh = document.querySelector("[data-refresh]");
  if (refresh) {
    var seconds = parseFloat(refresh.getAttribute("data-refresh")) || 2;
    window.setTimeout(function () { window.location.reload(); }, seconds * 1000);
  }
});
