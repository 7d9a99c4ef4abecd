// A job's page follows the job while it runs: its logs and state arrive as
// Server-Sent Events; when it ends the page reloads to show its files and metrics.
(function () {
  "use strict";
  var job = document.getElementById("job");
  if (!job || job.getAttribute("data-live") !== "1" || !window.EventSource) { return; }
  var source = new EventSource(job.getAttribute("data-events-url"));

  source.addEventListener("log", function (event) {
    var data = JSON.parse(event.data);
    var box = document.getElementById(data.stream);
    if (!box || !data.text) { return; }
    var atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    box.appendChild(document.createTextNode(data.text));
    if (atEnd) { box.scrollTop = box.scrollHeight; }
  });

  source.addEventListener("state", function (event) {
    var data = JSON.parse(event.data);
    var badge = document.getElementById("job-state");
    badge.textContent = data.label;
    badge.className = "badge " + data.badge;
    badge.setAttribute("data-state", data.state);
    document.getElementById("job-reason").textContent = data.reason || "";
    document.getElementById("job-exit-code").textContent = data.exit_code === null ? "—" : String(data.exit_code);
  });

  source.addEventListener("end", function () {
    source.close();
    window.location.reload();
  });
}());
