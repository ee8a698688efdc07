// ratelimit dashboard: draws /api/live (every few seconds) and /api/spend (every minute).
// No library and nothing fetched from elsewhere: the charts are plain SVG built here.
// Money arrives as exact decimal strings and is formatted as text, never through a
// float; floats only size the bars.
"use strict";

(function () {
  const LIVE_EVERY_MS = 3000;
  const SPEND_EVERY_MS = 60000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#3b6fd8", "#e0803a", "#3aa676", "#c9485b", "#8a63c9", "#b59a2c",
    "#2aa3b8", "#d46fb0", "#6d7a89", "#7fb13c"];

  // The token the page was opened with (?token=...) goes to the API in a header.
  const token = new URLSearchParams(window.location.search).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const colors = {};

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  // "1234.5" -> "$1,234.50": exact, from the string's digits; at least two decimals.
  function usd(amount) {
    let text = String(amount);
    let sign = "";
    if (text.startsWith("-")) { sign = "-"; text = text.slice(1); }
    const parts = text.split(".");
    const whole = parts[0].replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    let fraction = (parts[1] || "").replace(/0+$/, "");
    while (fraction.length < 2) fraction += "0";
    return sign + "$" + whole + "." + fraction;
  }

  // A bucket's level (not money): one decimal below 100 units, none above.
  function amount(text) {
    const value = parseFloat(text);
    const digits = Math.abs(value) < 100 ? 1 : 0;
    return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function percent(fraction) {
    return (parseFloat(fraction) * 100).toFixed(1) + "%";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "ended";
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    if (d > 0) return d + " d " + h + " h";
    if (h > 0) return h + " h " + String(m).padStart(2, "0") + " min";
    if (m > 0) return m + " min " + String(seconds % 60).padStart(2, "0") + " s";
    return seconds + " s";
  }

  function utc(iso) {
    return iso ? new Date(iso).toISOString().slice(0, 19).replace("T", " ") + " UTC" : "";
  }

  function colorOf(model) {
    if (!(model in colors)) colors[model] = PALETTE[Object.keys(colors).length % PALETTE.length];
    return colors[model];
  }

  function replace(id, nodes) {
    const box = $(id);
    box.replaceChildren(...nodes);
  }

  function empty(text) { return el("p", { class: "empty", text: text }); }

  // -- budgets: a half-circle gauge each ------------------------------------------

  function arc(from, to) {
    const point = (f) => {
      const angle = Math.PI * (1 - Math.min(Math.max(f, 0), 0.9999));
      return [60 + 48 * Math.cos(angle), 60 - 48 * Math.sin(angle)];
    };
    const [x1, y1] = point(from);
    const [x2, y2] = point(to);
    return "M " + x1.toFixed(2) + " " + y1.toFixed(2) + " A 48 48 0 0 1 " +
      x2.toFixed(2) + " " + y2.toFixed(2);
  }

  function gauge(budget) {
    const limit = parseFloat(budget.limit_usd);
    const spent = limit > 0 ? parseFloat(budget.spent_usd) / limit : 1;
    const reserved = limit > 0 ? parseFloat(budget.reserved_usd) / limit : 0;
    const parts = [svg("path", { d: arc(0, 1), class: "gauge-track" })];
    if (spent > 0) parts.push(svg("path", { d: arc(0, spent), class: "gauge-spent" }));
    if (reserved > 0) {
      parts.push(svg("path", { d: arc(spent, spent + reserved), class: "gauge-reserved" }));
    }
    parts.push(svg("text", { x: 60, y: 56, class: "gauge-value", text: percent(budget.used) }));
    parts.push(svg("text", { x: 60, y: 72, class: "gauge-label", text: "of the limit" }));
    return svg("svg", { viewBox: "0 0 120 78", class: "gauge", role: "img" }, parts);
  }

  function figure(label, cls, value) {
    return el("div", { class: "figure" }, [
      el("span", { class: "figure-label", text: label }),
      el("span", { class: "figure-value " + cls, text: value }),
    ]);
  }

  function renderBudgets(budgets) {
    if (!budgets.length) return replace("budgets", [empty("no budget found")]);
    replace("budgets", budgets.map((b) => el("div", { class: "card budget", "data-scope": b.scope }, [
      el("h3", { text: b.scope }),
      gauge(b),
      figure("spent", "spent", usd(b.spent_usd)),
      figure("reserved", "reserved", usd(b.reserved_usd)),
      figure("limit", "limit", usd(b.limit_usd)),
      figure("available", "available", usd(b.available_usd)),
      figure("resets in", "resets", duration(b.resets_in_s)),
      el("p", { class: "note", text: b.period ? "period " + b.period + ", resets " + utc(b.resets_at) : "period ended" }),
    ])));
  }

  // -- quotas: one bar per dimension -----------------------------------------------

  function bar(fraction, cls) {
    const fill = el("div", { class: "bar-fill " + (cls || "") });
    fill.style.width = Math.min(Math.max(parseFloat(fraction), 0), 1) * 100 + "%";
    return el("div", { class: "bar" }, [fill]);
  }

  function renderQuotas(quotas) {
    if (!quotas.length) return replace("quotas", [empty("no quota in use (a scope without a budget keeps no keys while its buckets are full)")]);
    const rows = [];
    for (const q of quotas) {
      q.dimensions.forEach((d, i) => {
        const over = parseFloat(d.utilization) > 1 ? "over" : "";
        rows.push(el("tr", { "data-scope": q.scope, "data-dimension": d.dimension }, [
          el("td", { class: "name", text: i === 0 ? q.scope : "" }),
          el("td", { text: d.dimension }),
          el("td", { class: "wide" }, [bar(d.utilization, over)]),
          el("td", { class: "num utilization", text: percent(d.utilization) }),
          el("td", { class: "num used", text: amount(d.used) + " / " + amount(d.capacity) }),
          el("td", { class: "state", text: d.status }),
        ]));
      });
    }
    const head = el("tr", {}, ["scope", "dimension", "", "used", "used / capacity", "state"]
      .map((t) => el("th", { text: t })));
    replace("quotas", [el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)])]);
  }

  // -- alerts ------------------------------------------------------------------

  function renderAlerts(alerts) {
    if (!alerts.length) return replace("alerts", [empty("no alert has fired")]);
    const head = el("tr", {}, ["fired", "scope", "threshold", "spent", "limit", "period"]
      .map((t) => el("th", { text: t })));
    const rows = alerts.map((a) => el("tr", { class: "alert" }, [
      el("td", { text: utc(a.fired_at) }),
      el("td", { class: "name", text: a.scope }),
      el("td", { class: "num", text: percent(a.threshold) }),
      el("td", { class: "num", text: usd(a.spent_usd) }),
      el("td", { class: "num", text: usd(a.limit_usd) }),
      el("td", { text: a.period }),
    ]));
    replace("alerts", [el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)])]);
  }

  // -- spend: stacked bars per day, and the top lists -------------------------------

  function niceMax(value) {
    if (value <= 0) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= value) return m * step;
    return 10 * step;
  }

  function readout(day) {
    const parts = [el("strong", { class: "day", text: day.day }), document.createTextNode(": "),
      el("span", { class: "day-total", text: usd(day.total_usd) })];
    const models = Object.entries(day.models);
    if (models.length) {
      parts.push(document.createTextNode(" \u2014 " +
        models.map(([m, v]) => m + " " + usd(v)).join(", ")));
    }
    replace("spend-readout", parts);
  }

  function renderChart(spend) {
    const W = 900, H = 240, left = 64, bottom = 28, top = 10;
    const days = spend.days;
    const max = niceMax(Math.max(0, ...days.map((d) => parseFloat(d.total_usd))));
    const slot = (W - left) / days.length;
    const y = (v) => top + (H - top - bottom) * (1 - v / max);
    const nodes = [];
    for (let i = 0; i <= 5; i++) {
      const v = (max * i) / 5;
      nodes.push(svg("line", { x1: left, x2: W, y1: y(v), y2: y(v), class: "grid" }));
      nodes.push(svg("text", { x: left - 6, y: y(v) + 4, class: "axis y", text: usd(String(+v.toFixed(6))) }));
    }
    days.forEach((day, i) => {
      const x = left + i * slot + slot * 0.15;
      const width = slot * 0.7;
      const rects = [svg("rect", { x: left + i * slot, y: top, width: slot, height: H - top - bottom, class: "hover" })];
      let base = 0;
      for (const model of spend.models) {
        const v = parseFloat(day.models[model] || "0");
        if (v <= 0) continue;
        rects.push(svg("rect", { x: x, y: y(base + v), width: width, height: Math.max(y(base) - y(base + v), 0.5), fill: colorOf(model), class: "segment" }));
        base += v;
      }
      rects.push(svg("title", { text: day.day + ": " + usd(day.total_usd) }));
      const group = svg("g", { class: "bar-day", "data-day": day.day, "data-total": day.total_usd }, rects);
      group.addEventListener("mouseenter", () => readout(day));
      group.addEventListener("click", () => readout(day));
      nodes.push(group);
      if (i % 5 === (days.length - 1) % 5) {
        nodes.push(svg("text", { x: left + (i + 0.5) * slot, y: H - 8, class: "axis x", text: day.day.slice(5) }));
      }
    });
    replace("spend-chart", [svg("svg", { viewBox: "0 0 " + W + " " + H, class: "bars", role: "img" }, nodes)]);
    readout(days[days.length - 1]);
    replace("spend-legend", spend.models.map((m) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colorOf(m);
      return el("span", { class: "legend-item" }, [swatch, document.createTextNode(m)]);
    }));
  }

  function ranking(rows, cls) {
    if (!rows.length) return empty("nothing spent in these 30 days");
    const most = parseFloat(rows[0].usd) || 1;
    return el("table", { class: "ranking " + cls }, [el("tbody", {}, rows.map((r) =>
      el("tr", { "data-name": r.name }, [
        el("td", { class: "name", text: r.name }),
        el("td", { class: "wide" }, [bar(parseFloat(r.usd) / most)]),
        el("td", { class: "num usd", text: usd(r.usd) }),
      ])))]);
  }

  function renderSpend(spend) {
    const where = spend.source === "postgres" ? "from the ledger of record (PostgreSQL)"
      : "from what the Redis ledger streams hold";
    $("spend-source").textContent = "(" + spend.first_day + " to " + spend.last_day + ", " +
      usd(spend.total_usd) + " in all, " + where + (spend.truncated ? ", truncated" : "") + ")";
    renderChart(spend);
    replace("top-scopes", [ranking(spend.top_scopes, "scopes")]);
    replace("top-tags", spend.top_tags.length ? spend.top_tags.map((t) =>
      el("div", { class: "tag", "data-tag": t.tag }, [el("h3", { text: t.tag }), ranking(t.values, "tags")]))
      : [empty("no tags on the ledger's entries")]);
  }

  // -- polling -----------------------------------------------------------------

  let lastError = null;

  async function load(path) {
    const response = await fetch(path, { headers: headers, cache: "no-store" });
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
    return body;
  }

  function showStatus(live) {
    const status = $("status");
    if (lastError) {
      status.textContent = "cannot read: " + lastError;
      status.className = "status error";
    } else if (live) {
      status.textContent = "Redis time " + utc(live.time) + " \u00b7 live figures every " +
        LIVE_EVERY_MS / 1000 + " s" + (live.truncated ? " \u00b7 too many scopes: truncated" : "");
      status.className = "status ok";
    }
  }

  async function refreshLive() {
    try {
      const live = await load("api/live");
      lastError = null;
      renderBudgets(live.budgets);
      renderQuotas(live.quotas);
      renderAlerts(live.alerts);
      showStatus(live);
      document.body.setAttribute("data-live-time", live.time_us);
    } catch (error) {
      lastError = error.message;
      showStatus(null);
    }
  }

  async function refreshSpend() {
    try {
      renderSpend(await load("api/spend"));
      document.body.setAttribute("data-spend-loaded", "1");
    } catch (error) {
      lastError = error.message;
      showStatus(null);
    }
  }

  refreshLive();
  refreshSpend();
  window.setInterval(refreshLive, LIVE_EVERY_MS);
  window.setInterval(refreshSpend, SPEND_EVERY_MS);
})();
