// The job list refreshes the rows of unfinished jobs, at most once a second.
(function () {
  "use strict";
  var table = document.getElementById("job-list");
  if (!table || !window.fetch) { return; }
  var url = table.getAttribute("data-rows-url");

  function pending() {
    return Array.prototype.slice.call(table.querySelectorAll('tr[data-terminal="0"]'));
  }

  function update(job) {
    var row = document.getElementById("job-" + job.id);
    if (!row) { return; }
    var badge = row.querySelector(".job-state");
    badge.textContent = job.label;
    badge.className = "badge " + job.badge + " job-state";
    badge.setAttribute("data-state", job.state);
    row.querySelector(".exit-code").textContent = job.exit_code === null ? "" : String(job.exit_code);
    row.setAttribute("data-terminal", job.terminal ? "1" : "0");
  }

  function refresh() {
    var rows = pending();
    if (!rows.length) { return; }
    var query = rows.map(function (r) { return "id=" + encodeURIComponent(r.getAttribute("data-job-id")); });
    var started = Date.now();
    fetch(url + "?" + query.join("&"), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (answer) { if (!answer.ok) { throw new Error(String(answer.status)); } return answer.json(); })
      .then(function (body) {
        body.jobs.forEach(update);
        setTimeout(refresh, Math.max(1000, 1000 - (Date.now() - started)));
      })
      .catch(function () { setTimeout(refresh, 5000); });
  }

  setTimeout(refresh, 1000);
}());
