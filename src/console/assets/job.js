// A job's page (src/console/pages.rs): polls the job's JSON every second and updates its state and
// progress; once it has ended, reloads the page, which renders the report on the server.
// Progressive enhancement: without it the page has a reload link (and a meta refresh). Values are
// set as text (textContent), never as HTML.
(function () {
  "use strict";
  var job = document.getElementById("job");
  var state = document.getElementById("job-state");
  var bar = document.getElementById("job-progress");
  var count = document.getElementById("job-count");
  if (!job || !state || !bar || !count || !window.fetch) {
    return;
  }
  var source = job.getAttribute("data-source");
  function show(view) {
    var total = view.total === null ? "?" : String(view.total);
    state.textContent = view.state;
    state.className = "job-" + view.state;
    count.textContent = view.done + " / " + total;
    if (view.total !== null) {
      bar.max = Math.max(view.total, 1);
      bar.value = view.total === 0 ? 1 : view.done;
    }
  }
  function poll() {
    fetch(source, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("status " + response.status);
        }
        return response.json();
      })
      .then(function (view) {
        show(view);
        if (view.state === "running") {
          window.setTimeout(poll, 1000);
        } else {
          window.location.reload();
        }
      })
      .catch(function () {
        state.textContent = "running (the console did not answer; retrying)";
        window.setTimeout(poll, 2000);
      });
  }
  window.setTimeout(poll, 1000);
})();
