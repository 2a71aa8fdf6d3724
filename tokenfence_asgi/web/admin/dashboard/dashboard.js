// TokenFence dashboard. Plain JS, no build step, no network beyond this app's API.
// Untrusted text (tenant ids, messages) only ever goes into textContent, never into HTML.
(function () {
  "use strict";

  var TOKEN_KEY = "tokenfence-admin-token";
  var REFRESH_MS = 5000;
  var ARM_MS = 4000;
  var state = {
    info: null,
    overview: null,
    armed: null, // {key, until}
    busy: {},
    timer: null,
    generation: 0,
  };

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function token() {
    try { return window.sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function setToken(value) {
    try {
      if (value) window.sessionStorage.setItem(TOKEN_KEY, value);
      else window.sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage disabled: the token lives until reload */ }
    memoryToken = value || "";
  }
  var memoryToken = "";

  function authHeader() {
    var t = token() || memoryToken;
    return t ? { Authorization: "Bearer " + t } : {};
  }

  function ApiError(status, body) {
    this.status = status;
    this.body = body || {};
    this.message = (body && body.message) || ("HTTP " + status);
  }

  function api(method, path, body) {
    var headers = authHeader();
    var init = { method: method, headers: headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!response.ok) throw new ApiError(response.status, data);
        return data;
      });
    });
  }

  // The id goes in the query, not the path: encodeURIComponent leaves "." and "..", which the
  // browser would resolve as path steps ("api/tenants/../kill" is "api/kill", the global switch).
  function tenantPath(id, action) {
    return "api/tenant" + (action ? "/" + action : "") + "?id=" + encodeURIComponent(id);
  }

  // -- formatting ------------------------------------------------------------------------------

  function money(text) {
    if (text === null || text === undefined) return "–";
    var value = Number(text);
    if (!isFinite(value)) return "$" + text;
    var digits = value !== 0 && Math.abs(value) < 0.01 ? 4 : 2;
    return "$" + value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function percent(fraction) {
    var p = fraction * 100;
    if (p >= 100) return Math.round(p) + "%";
    if (p > 0 && p < 1) return "<1%";
    return Math.floor(p) + "%";
  }

  function level(fraction) {
    if (fraction === null || fraction === undefined) return "level-none";
    if (fraction >= 1) return "level-out";
    if (fraction >= 0.8) return "level-hot";
    if (fraction >= 0.5) return "level-warn";
    return "level-ok";
  }

  var WINDOW_NAMES = { "1m": "per minute", "1h": "per hour", "1d": "per day", "7d": "per week", "1mo": "per month" };

  function until(iso) {
    var ms = Date.parse(iso) - Date.now();
    if (!isFinite(ms)) return "";
    if (ms <= 0) return "resets now";
    var minutes = Math.round(ms / 60000);
    if (minutes < 60) return "resets in " + Math.max(1, minutes) + "m";
    var hours = Math.floor(minutes / 60);
    if (hours < 48) return "resets in " + hours + "h " + (minutes % 60) + "m";
    return "resets in " + Math.round(hours / 24) + "d";
  }

  function ago(iso) {
    var s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (!isFinite(s)) return "";
    if (s < 5) return "just now";
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + "m ago";
    if (s < 86400) return Math.floor(s / 3600) + "h ago";
    return Math.floor(s / 86400) + "d ago";
  }

  // -- arming (two clicks for anything that stops traffic) --------------------------------------

  function isArmed(key) {
    return state.armed && state.armed.key === key && state.armed.until > Date.now();
  }

  function arm(key) {
    state.armed = { key: key, until: Date.now() + ARM_MS };
    window.setTimeout(function () {
      if (state.armed && state.armed.key === key && state.armed.until <= Date.now()) {
        state.armed = null;
        render();
      }
    }, ARM_MS + 50);
    render();
  }

  function act(key, run) {
    if (!isArmed(key)) { arm(key); return; }
    state.armed = null;
    state.busy[key] = true;
    render();
    run().then(function () {
      delete state.busy[key];
      return refresh();
    }, function (error) {
      delete state.busy[key];
      showBanner("Action failed: " + error.message);
      render();
    });
  }

  // -- rendering --------------------------------------------------------------------------------

  function showBanner(text, className) {
    var banner = $("banner");
    banner.textContent = text;
    banner.className = "banner" + (className ? " " + className : "");
    banner.hidden = !text;
  }

  function tenantRow(t, readOnly) {
    var binding = t.binding;
    var fraction = binding ? binding.fraction : null;
    var li = el("li", "tenant " + level(fraction) + (t.killed ? " killed" : ""));
    li.dataset.tenant = t.tenant_id;
    li.dataset.fraction = fraction === null ? "" : String(fraction);
    li.dataset.killed = t.killed ? "true" : "false";
    li.dataset.tenantKilled = t.tenant_killed ? "true" : "false";

    var who = el("div", "who");
    var name = el("span", "tenant-name", t.tenant_id);
    name.title = t.tenant_id;
    who.appendChild(name);
    var pills = el("div", "pills");
    pills.appendChild(el("span", "pill", t.plan));
    if (t.pool) pills.appendChild(el("span", "pill pool", "pool " + t.pool));
    var ownKill = t.tenant_killed === undefined ? t.killed : t.tenant_killed;
    if (ownKill) pills.appendChild(el("span", "pill killed", "killed"));
    else if (t.killed) pills.appendChild(el("span", "pill stopped", "stopped for all"));
    (t.killed_features || []).forEach(function (f) {
      pills.appendChild(el("span", "pill feature-killed", f + " off"));
    });
    who.appendChild(pills);
    li.appendChild(who);

    var meter = el("div", "meter");
    meter.setAttribute("role", "meter");
    meter.setAttribute("aria-label", t.tenant_id + " budget used");
    var fill = el("div", "fill");
    var held = el("div", "held");
    var usedFraction = 0, heldFraction = 0;
    if (binding && binding.metric === "cost" && binding.limit !== null) {
      var limit = Number(binding.limit);
      usedFraction = limit > 0 ? Number(binding.used) / limit : 0;
      heldFraction = limit > 0 ? Number(binding.held) / limit : 0;
    } else if (binding) {
      usedFraction = binding.fraction;
    }
    var usedWidth = Math.max(0, Math.min(100, usedFraction * 100));
    var heldWidth = Math.max(0, Math.min(100 - usedWidth, heldFraction * 100));
    fill.style.width = usedWidth.toFixed(2) + "%";
    held.style.left = usedWidth.toFixed(2) + "%";
    held.style.width = heldWidth.toFixed(2) + "%";
    meter.setAttribute("aria-valuenow", String(Math.round(Math.min(1, fraction || 0) * 100)));
    meter.appendChild(fill);
    meter.appendChild(held);
    [50, 80].forEach(function (p) {
      var mark = el("div", "mark");
      mark.style.left = p + "%";
      meter.appendChild(mark);
    });
    li.appendChild(meter);

    var figures = el("div", "figures");
    if (binding) {
      figures.appendChild(el("span", "pct", percent(binding.fraction)));
      var text;
      if (binding.metric === "cost") {
        text = money(binding.used) + " of " + money(binding.limit);
      } else {
        text = binding.requests + " of " + binding.max_requests + " calls";
      }
      text += " " + (WINDOW_NAMES[binding.window] || binding.window);
      if (binding.scope === "pool") text += " (pool " + t.pool + ")";
      figures.appendChild(el("span", "amounts", text));
      var held = binding.metric === "cost" && Number(binding.held) > 0 ? "+ " + money(binding.held) + " held · " : "";
      figures.appendChild(el("span", "resets", held + until(binding.resets_at)));
    } else {
      figures.appendChild(el("span", "pct", "no limit"));
      var spent = spentRecently(t.tenant_id);
      if (spent) figures.appendChild(el("span", "amounts", spent));
    }
    li.appendChild(figures);

    var ops = el("div", "ops");
    if (!readOnly) {
      var key = "tenant:" + t.tenant_id;
      var armed = isArmed(key);
      var button = el("button", "btn " + (ownKill ? "btn-revive" : "btn-kill") + (armed ? " armed" : ""));
      button.type = "button";
      button.dataset.action = ownKill ? "revive" : "kill";
      button.textContent = armed ? (ownKill ? "Confirm" : "Confirm kill") : (ownKill ? "Revive" : "Kill");
      button.title = ownKill ? "Let " + t.tenant_id + "'s AI calls through again" : "Refuse every AI call of " + t.tenant_id;
      button.disabled = !!state.busy[key];
      button.addEventListener("click", function () {
        var path = tenantPath(t.tenant_id, ownKill ? "revive" : "kill");
        act(key, function () { return api("POST", path, {}); });
      });
      ops.appendChild(button);
    }
    li.appendChild(ops);
    return li;
  }

  function spentRecently(tenant) {
    var top = state.overview && state.overview.top_spenders;
    if (!top) return "";
    for (var i = 0; i < top.tenants.length; i++) {
      if (top.tenants[i].tenant_id === tenant) {
        return money(top.tenants[i].cost) + " spent " + (top.days === 1 ? "today" : "in " + top.days + " days");
      }
    }
    return "";
  }

  function refusalDetail(r) {
    var where = r.window ? " " + (WINDOW_NAMES[r.window] || r.window) : "";
    if (r.error === "ai_budget_exceeded" && r.limit) {
      var text = money(r.used) + " of " + money(r.limit) + where + ", asked " + money(r.requested);
      if (Number(r.held) > 0) text += " (" + money(r.held) + " held)";
      if (r.reason === "share") text += "; the rest is kept for other features";
      if (r.reason === "cap") text += "; the feature's cap";
      if (r.scope === "pool") text += "; pool " + r.pool;
      return text;
    }
    if (r.error === "ai_request_limit_exceeded" && r.max_requests) {
      return r.requests + " of " + r.max_requests + " calls" + where + (r.scope === "pool" ? "; pool " + r.pool : "");
    }
    return r.message;
  }

  function renderTenants(data, readOnly) {
    var list = $("tenants");
    var query = ($("filter").value || "").trim().toLowerCase();
    var rows = data.tenants.filter(function (t) {
      return !query || t.tenant_id.toLowerCase().indexOf(query) !== -1 || t.plan.toLowerCase().indexOf(query) !== -1;
    });
    var fragment = document.createDocumentFragment();
    rows.forEach(function (t) { fragment.appendChild(tenantRow(t, readOnly)); });
    list.replaceChildren(fragment);
    $("tenants-empty").hidden = rows.length > 0;
    $("tenants-empty").textContent = data.tenants.length ? "No tenant matches the filter." : "No tenants yet.";
    var truncated = $("truncated");
    truncated.hidden = !data.truncated;
    truncated.textContent = data.truncated ? "Showing the first " + data.tenants.length + " tenants found." : "";
  }

  function renderTop(top) {
    var list = $("top");
    var rows = top.tenants || [];
    var max = rows.reduce(function (m, r) { return Math.max(m, Number(r.cost)); }, 0);
    var fragment = document.createDocumentFragment();
    rows.forEach(function (r) {
      var li = el("li");
      li.dataset.tenant = r.tenant_id;
      var name = el("span", "who-name", r.tenant_id);
      name.title = r.tenant_id;
      li.appendChild(name);
      li.appendChild(el("span", "amount", money(r.cost)));
      var spark = el("span", "spark");
      var bar = el("i");
      bar.style.width = (max > 0 ? Number(r.cost) / max * 100 : 0).toFixed(1) + "%";
      spark.appendChild(bar);
      li.appendChild(spark);
      fragment.appendChild(li);
    });
    list.replaceChildren(fragment);
    $("top-empty").hidden = rows.length > 0;
    $("top-period").textContent = top.days === 1 ? "today" : "last " + top.days + " days";
  }

  var REFUSALS = {
    ai_budget_exceeded: "budget exceeded",
    ai_request_limit_exceeded: "request limit reached",
    ai_disabled: "kill switch",
  };

  function renderEvents(activity) {
    var refusals = $("refusals");
    var fragment = document.createDocumentFragment();
    activity.refusals.forEach(function (r) {
      var li = el("li");
      var what = el("span", "what");
      what.appendChild(el("span", "tag " + (r.error === "ai_disabled" ? "tag-killed" : "tag-refused"), REFUSALS[r.error] || r.error));
      what.appendChild(document.createTextNode(r.tenant_id + (r.feature ? " · " + r.feature : "")));
      li.appendChild(what);
      li.appendChild(el("span", "when", ago(r.at)));
      li.appendChild(el("span", "detail", refusalDetail(r)));
      li.title = r.message;
      fragment.appendChild(li);
    });
    refusals.replaceChildren(fragment);
    $("refusals-empty").hidden = activity.refusals.length > 0;

    var alerts = $("alerts");
    fragment = document.createDocumentFragment();
    activity.alerts.forEach(function (a) {
      var li = el("li");
      var what = el("span", "what");
      what.appendChild(el("span", "tag tag-" + a.threshold, a.threshold + "%"));
      var who = a.scope === "pool" ? "pool " + a.pool + " (" + a.tenant_id + ")" : a.tenant_id;
      what.appendChild(document.createTextNode(who));
      li.appendChild(what);
      li.appendChild(el("span", "when", ago(a.at)));
      var detail = a.metric === "cost"
        ? money(a.used) + " of " + money(a.limit)
        : a.used + " of " + a.limit + " calls";
      detail += " " + (WINDOW_NAMES[a.window] || a.window) + (a.feature ? " · " + a.feature : "");
      li.appendChild(el("span", "detail", detail));
      fragment.appendChild(li);
    });
    alerts.replaceChildren(fragment);
    $("alerts-empty").hidden = activity.alerts.length > 0;
  }

  function setStat(id, value, flag) {
    var node = $(id);
    node.textContent = String(value);
    if (flag !== undefined) node.parentNode.classList.toggle("nonzero", value > 0);
  }

  function render() {
    var data = state.overview;
    if (!data) return;
    var readOnly = data.read_only;
    setStat("stat-tenants", data.summary.tenants);
    setStat("stat-risk", data.summary.at_risk + data.summary.exhausted, true);
    setStat("stat-out", data.summary.exhausted, true);
    setStat("stat-killed", data.summary.killed);
    setStat("stat-refusals", data.activity.refusals.length);
    renderTenants(data, readOnly);
    renderTop(data.top_spenders);
    renderEvents(data.activity);

    var stopped = data.switches.killed;
    var global = $("global-kill");
    global.hidden = readOnly;
    var armed = isArmed("global");
    global.className = "btn btn-danger" + (armed ? " armed" : "");
    global.textContent = stopped
      ? (armed ? "Confirm resume" : "Resume all AI")
      : (armed ? "Confirm: stop every tenant" : "Stop all AI");
    global.dataset.action = stopped ? "revive" : "kill";
    global.disabled = !!state.busy.global;
    if (stopped) {
      showBanner("All AI calls are stopped (global kill switch).", "stopped");
    } else if (data.switches.killed_features.length) {
      showBanner("Stopped for everyone: " + data.switches.killed_features.join(", "), "stopped");
    } else if ($("banner").className.indexOf("stopped") !== -1) {
      showBanner("");
    }
    state.generation += 1;
    document.body.dataset.generation = String(state.generation);
    document.body.dataset.state = "ready";
  }

  function setLive(ok, text) {
    var live = $("live");
    live.className = "live " + (ok ? "ok" : "error");
    $("updated").textContent = text;
  }

  function refresh() {
    return api("GET", "api/overview").then(function (data) {
      state.overview = data;
      if ($("banner").className === "banner") showBanner("");
      setLive(true, "updated " + new Date().toLocaleTimeString());
      render();
    }, function (error) {
      if (error.status === 401) { showLogin("The token was refused."); return; }
      setLive(false, "not updated");
      showBanner("Cannot load the dashboard data: " + error.message);
    });
  }

  function schedule() {
    if (state.timer) window.clearInterval(state.timer);
    state.timer = window.setInterval(function () {
      if (!document.hidden) refresh();
    }, REFRESH_MS);
  }

  function showLogin(message) {
    if (state.timer) window.clearInterval(state.timer);
    state.timer = null;
    $("app").hidden = true;
    $("global-kill").hidden = true;
    $("signout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    document.body.dataset.state = "login";
    $("token").focus();
  }

  function start() {
    return api("GET", "api/info").then(function (info) {
      state.info = info;
      $("login").hidden = true;
      $("app").hidden = false;
      $("signout").hidden = info.auth !== "token";
      return refresh().then(schedule);
    }, function (error) {
      if (error.status === 401) {
        showLogin(token() ? "The token was refused." : "");
      } else {
        setLive(false, "offline");
        showBanner("Cannot reach the admin API: " + error.message);
        document.body.dataset.state = "error";
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("login-form").addEventListener("submit", function (event) {
      event.preventDefault();
      setToken($("token").value.trim());
      $("token").value = "";
      start();
    });
    $("signout").addEventListener("click", function () {
      setToken("");
      state.overview = null;
      showLogin("");
    });
    $("filter").addEventListener("input", render);
    $("global-kill").addEventListener("click", function () {
      var path = state.overview && state.overview.switches.killed ? "api/revive" : "api/kill";
      act("global", function () { return api("POST", path, {}); });
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && state.timer) refresh();
    });
    start();
  });
})();
