// action_event dashboard: the Overview's live table and chart. Plain JS,
// embedded in the binary; polls `api/live` every 2 seconds.
(function () {
  "use strict";
  var chart = document.getElementById("chart");
  if (!chart) return;
  var base = document.body.getAttribute("data-base") || "";
  var tbody = document.querySelector("#queues tbody");
  var rates = document.getElementById("rates");
  var svg = chart.querySelector("svg");
  var NS = "http://www.w3.org/2000/svg";
  var W = 900, H = 220, WINDOW_MS = 15 * 60 * 1000;
  var SERIES = [["processed", "#3056d3"], ["failed", "#d92d20"], ["retried", "#f79009"], ["dead", "#6a1b9a"]];

  function draw(points) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var now = Date.now(), from = now - WINDOW_MS, max = 1;
    points.forEach(function (p) {
      SERIES.forEach(function (s) { if (p[s[0]] > max) max = p[s[0]]; });
    });
    for (var i = 1; i <= 3; i++) {
      var y = H - (H * i) / 4, grid = document.createElementNS(NS, "line");
      grid.setAttribute("x1", 0); grid.setAttribute("x2", W);
      grid.setAttribute("y1", y); grid.setAttribute("y2", y);
      grid.setAttribute("stroke", "#eef0f3");
      svg.appendChild(grid);
      var label = document.createElementNS(NS, "text");
      label.setAttribute("x", 4); label.setAttribute("y", y - 3);
      label.setAttribute("font-size", "11"); label.setAttribute("fill", "#98a2b3");
      label.textContent = ((max * i) / 4).toFixed(max < 4 ? 1 : 0) + "/s";
      svg.appendChild(label);
    }
    SERIES.forEach(function (s) {
      var line = document.createElementNS(NS, "polyline");
      line.setAttribute("class", s[0]);
      line.setAttribute("stroke", s[1]);
      line.setAttribute("points", points.filter(function (p) { return p.t >= from; }).map(function (p) {
        var x = ((p.t - from) / WINDOW_MS) * W, y = H - 4 - ((H - 8) * p[s[0]]) / max;
        return x.toFixed(1) + "," + y.toFixed(1);
      }).join(" "));
      svg.appendChild(line);
    });
    var total = 0;
    points.forEach(function (p) { total += p.processed; });
    chart.setAttribute("data-points", String(points.length));
    chart.setAttribute("data-processed-total", total.toFixed(2));
    var last = points[points.length - 1];
    if (last && rates) {
      rates.textContent = SERIES.map(function (s) { return s[0] + " " + last[s[0]].toFixed(1); }).join(" · ");
    }
  }

  function refresh() {
    fetch(base + "/api/live", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (live) {
        if (tbody) tbody.innerHTML = live.rows_html;
        draw(live.points);
        chart.setAttribute("data-updated", String(Date.now()));
      })
      .catch(function (e) { if (rates) rates.textContent = "update failed: " + e.message; })
      .then(function () { setTimeout(refresh, 2000); });
  }
  refresh();
})();
