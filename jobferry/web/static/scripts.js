// The script form: the version picker follows its choice, and options of one
// mutually exclusive group are marked while more than one is given (the server
// refuses that combination either way). Everything works without this file.
"use strict";
(function () {
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", function () { select.form.submit(); });
  }
  const form = document.getElementById("script-form");
  if (!form) { return; }
  const params = Array.from(form.querySelectorAll(".param[data-mutex]"));
  function given(param) {
    return Array.from(param.querySelectorAll("input, select, textarea")).some(function (el) {
      if (el.type === "checkbox") { return el.checked; }
      if (el.type === "number" && param.classList.contains("kind-count")) { return Number(el.value) > 0; }
      return el.value !== "";
    });
  }
  function mark() {
    for (const param of params) {
      const others = param.dataset.mutex.split(" ");
      const clash = given(param) && params.some(function (other) {
        return other !== param && given(other) && others.includes(other.querySelector("label").textContent.trim());
      });
      param.classList.toggle("mutex-conflict", clash);
    }
  }
  form.addEventListener("input", mark);
  form.addEventListener("change", mark);
  mark();
}());
