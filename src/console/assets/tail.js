// The live tail of a tenant's page (src/console/pages.rs): the console's only script, compiled into
// the binary. Progressive enhancement: without it the page still shows the counts. Events are added
// as text (textContent), never as HTML: they are tenants' data.
(function () {
  "use strict";
  var list = document.getElementById("tail");
  var status = document.getElementById("tail-status");
  if (!list || !status || !window.EventSource) {
    return;
  }
  var kept = 200;
  var source = new EventSource(list.getAttribute("data-source"));
  function add(text, className) {
    var item = document.createElement("li");
    item.textContent = text;
    if (className) {
      item.className = className;
    }
    list.insertBefore(item, list.firstChild);
    while (list.children.length > kept) {
      list.removeChild(list.lastChild);
    }
  }
  source.onopen = function () {
    status.textContent = "live: new events appear at the top";
  };
  source.onerror = function () {
    status.textContent = "disconnected; reconnecting...";
  };
  source.onmessage = function (event) {
    add(event.data, "event");
  };
  source.addEventListener("lagged", function (event) {
    add("this tail fell behind and skipped some events: " + event.data, "muted");
  });
})();
