"""The report page's inline CSS and JavaScript (no network, no libraries).

The video cards are drawn by the script, one page at a time, from the data files of
``data/`` (``videos-NNNN.js``: loaded as scripts, which a page opened from disk may
do, when a page shows their videos; a few are kept); the blob in the page
(``<script id="mama-data" type="application/json">``) holds only the page size and
how many videos and files there are. So a report of any size keeps a small DOM and
loads only the images in view (``loading="lazy"``). The search box filters by
``video_id`` and caption words over ``data/search-NNNN.js`` (the lower-case texts of
each video, loaded on the first search); the
query and page live in the URL fragment (``index.html#q=dog&page=2``), so a view can
be bookmarked or shared.
"""

CSS = r"""
:root { --fg:#1d2327; --muted:#5f6b73; --line:#dde3e8; --bg:#f6f8fa; --card:#fff;
        --accent:#0b63a8; --bad:#b42318; --bad-bg:#fdecea; --ok:#146c2e; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;
       color:var(--fg); background:var(--bg); }
header.top { background:#fff; border-bottom:1px solid var(--line); padding:14px 24px; }
header.top h1 { margin:0 0 4px; font-size:20px; }
header.top .sub { color:var(--muted); font-size:13px; word-break:break-all; }
nav.sections a { margin-right:14px; color:var(--accent); text-decoration:none; font-size:13px; }
main { max-width:1400px; margin:0 auto; padding:12px 24px 48px; }
section { margin-top:22px; }
h2 { font-size:17px; margin:0 0 10px; }
h3 { font-size:15px; margin:0; word-break:break-all; }
h4 { font-size:12px; margin:10px 0 4px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
table { border-collapse:collapse; background:#fff; }
th, td { border:1px solid var(--line); padding:4px 8px; text-align:left; vertical-align:top; }
th { background:#eef2f5; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
table.qa-examples tr.wrong td { background:#fdecea; }
.muted, .none { color:var(--muted); }
.problem { color:var(--bad); background:var(--bad-bg); padding:6px 10px; border-radius:4px; margin:6px 0; }
.toolbar { position:sticky; top:0; z-index:2; background:var(--bg); padding:8px 0; display:flex;
           gap:10px; align-items:center; flex-wrap:wrap; border-bottom:1px solid var(--line); }
.toolbar input[type=search] { flex:1 1 320px; max-width:560px; padding:7px 10px; font-size:15px;
           border:1px solid #b8c2ca; border-radius:6px; }
.pager { display:flex; gap:6px; align-items:center; }
.pager button { padding:5px 10px; border:1px solid #b8c2ca; background:#fff; border-radius:5px; cursor:pointer; }
.pager button:disabled { opacity:.4; cursor:default; }
#cards { display:flex; flex-direction:column; gap:14px; margin-top:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card > header { display:flex; gap:12px; align-items:baseline; flex-wrap:wrap; }
.card .meta { color:var(--muted); font-size:12px; }
.card .body { display:flex; gap:16px; margin-top:8px; flex-wrap:wrap; }
.card .grid { flex:0 0 auto; width:480px; max-width:100%; }
.card .grid img { width:100%; height:auto; display:block; border-radius:4px; background:#222; aspect-ratio:16/9; object-fit:contain; }
.card .captions { flex:1 1 360px; min-width:280px; }
.card ul { margin:0; padding-left:18px; }
.card li { margin:2px 0 6px; }
.card .prov { display:block; color:var(--muted); font-size:12px; }
.card li.failed { color:var(--bad); }
.card .flags { display:inline-block; margin-left:6px; padding:0 5px; border-radius:3px; font-size:11px; background:#fde2c8; color:#8a3b00; }
.card .flags.clean { background:#dff3e0; color:#1d5e25; }
.strip { display:flex; gap:6px; overflow-x:auto; margin-top:10px; padding-bottom:4px; }
.strip figure { margin:0; flex:0 0 auto; text-align:center; }
.strip img { height:72px; width:auto; display:block; border-radius:3px; background:#222; min-width:40px; }
.strip figcaption { font-size:11px; color:var(--muted); font-variant-numeric:tabular-nums; }
.missing { display:flex; align-items:center; justify-content:center; background:#eee; color:var(--bad);
           font-size:12px; padding:8px; min-height:72px; border-radius:4px; word-break:break-all; }
.runs { display:flex; flex-direction:column; gap:16px; }
.run { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.run .pictures { display:flex; gap:12px; flex-wrap:wrap; margin:8px 0; }
.run .pictures figure { margin:0; }
.run .pictures img { max-width:640px; width:100%; height:auto; border:1px solid var(--line); }
.run .pictures figcaption { font-size:12px; color:var(--muted); }
.run table { margin:6px 0 10px; }
details > summary { cursor:pointer; margin:6px 0; }
td.reason { max-width:640px; word-break:break-word; }
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("mama-data").textContent);
  var total = data.total || 0, chunkSize = Math.max(1, data.chunkSize || 500), nChunks = data.chunks || 0;
  var pageSize = Math.max(1, data.pageSize || 50);
  var KEEP_CHUNKS = 4;  // video files kept after use: paging back and forth reloads nothing
  var store = { videos: {}, search: {} }, waiting = {}, recent = [];
  window.mamaReportData = function (kind, number, value) {
    store[kind][number] = value;
    var key = kind + number;
    (waiting[key] || []).forEach(function (w) { w[0](value); });
    delete waiting[key];
  };
  function load(kind, number) {
    if (store[kind][number] !== undefined) { return Promise.resolve(store[kind][number]); }
    var key = kind + number;
    return new Promise(function (resolve, reject) {
      if (waiting[key]) { waiting[key].push([resolve, reject]); return; }
      waiting[key] = [[resolve, reject]];
      var script = document.createElement("script");
      script.src = "data/" + kind + "-" + String(number).padStart(4, "0") + ".js";
      script.onload = function () { script.remove(); };
      script.onerror = function () {
        script.remove();
        (waiting[key] || []).forEach(function (w) { w[1](new Error("cannot load " + script.src)); });
        delete waiting[key];
      };
      document.head.appendChild(script);
    });
  }
  function keepRecent(numbers) {
    numbers.forEach(function (n) { recent = recent.filter(function (r) { return r !== n; }); recent.push(n); });
    while (recent.length > KEEP_CHUNKS) { delete store.videos[recent.shift()]; }
  }
  var state = { query: "", page: 0, matches: null };
  var $ = function (id) { return document.getElementById(id); };
  var search = $("search"), cards = $("cards"), count = $("match-count");
  var generation = 0, searchGeneration = 0;  // answers of a superseded page or search are dropped

  function filter() {
    // Resolves to the indices of the matching videos, or null for all of them.
    var terms = state.query.toLowerCase().split(/\s+/).filter(Boolean);
    if (!terms.length) { return Promise.resolve(null); }
    var all = [];
    for (var c = 0; c < nChunks; c++) { all.push(load("search", c)); }
    return Promise.all(all).then(function (lists) {
      var matches = [];
      lists.forEach(function (hays, c) {
        for (var i = 0; i < hays.length; i++) {
          var hay = hays[i], ok = true;
          for (var j = 0; j < terms.length; j++) {
            if (hay.indexOf(terms[j]) < 0) { ok = false; break; }
          }
          if (ok) { matches.push(c * chunkSize + i); }
        }
      });
      return matches;
    });
  }

  function matchCount() { return state.matches ? state.matches.length : total; }
  function pages() { return Math.max(1, Math.ceil(matchCount() / pageSize)); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }

  function fmtTime(seconds) {
    if (seconds === null || seconds === undefined) { return ""; }
    var m = Math.floor(seconds / 60), s = seconds - 60 * m;
    return m + ":" + (s < 10 ? "0" : "") + s.toFixed(1);
  }

  function image(src, alt, missing) {
    if (!src) { return el("div", "missing", "missing: " + (missing || "no image")); }
    var img = el("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = alt;
    img.src = src;
    return img;
  }

  function card(v) {
    var node = el("article", "card");
    node.setAttribute("data-video-id", v.id);
    var head = el("header");
    head.appendChild(el("h3", null, v.id));
    if (v.meta) { head.appendChild(el("span", "meta", v.meta)); }
    node.appendChild(head);
    var body = el("div", "body");
    var grid = el("div", "grid");
    if (v.grid) {
      var link = el("a");
      link.href = v.grid; link.target = "_blank"; link.rel = "noopener";
      link.appendChild(image(v.grid, "keyframe grid of " + v.id));
      grid.appendChild(link);
    } else {
      grid.appendChild(image(null, "", v.gridMissing));
    }
    body.appendChild(grid);
    var caps = el("div", "captions");
    caps.appendChild(el("h4", null, "Original caption" + ((v.orig || []).length === 1 ? "" : "s")));
    if (v.orig && v.orig.length) {
      var ul = el("ul", "orig");
      v.orig.forEach(function (t) { ul.appendChild(el("li", null, t)); });
      caps.appendChild(ul);
    } else {
      caps.appendChild(el("p", "none", data.hasOriginals ? "none for this video" : "none loaded (report --captions FILE)"));
    }
    caps.appendChild(el("h4", null, "Generated"));
    if (v.gen && v.gen.length) {
      var gl = el("ul", "gen");
      v.gen.forEach(function (g) {
        var li = el("li", g.ok ? "ok" : "failed");
        if (g.ok) {
          li.appendChild(el("span", "text", g.t));
          if (g.f) { li.appendChild(el("span", g.f.length ? "flags" : "flags clean", g.f.length ? g.f.join(", ") : "no flags")); }
        } else {
          li.appendChild(el("span", "text", "failed" + (g.k ? " (" + g.k + ")" : "") + ": " + (g.e || "")));
        }
        var prov = [g.m || "?"];
        if (g.p) { prov.push("prompt " + g.p); }
        if (g.s !== null && g.s !== undefined) { prov.push("seed " + g.s); }
        prov.push("#" + g.i);
        li.appendChild(el("span", "prov", prov.join(" \u00b7 ")));
        gl.appendChild(li);
      });
      caps.appendChild(gl);
    } else {
      caps.appendChild(el("p", "none", "not captioned yet"));
    }
    body.appendChild(caps);
    node.appendChild(body);
    if (v.frames && v.frames.length) {
      var strip = el("div", "strip");
      v.frames.forEach(function (f, k) {
        var fig = el("figure");
        fig.appendChild(image(f[0], "keyframe " + (k + 1) + " of " + v.id, f[2]));
        fig.appendChild(el("figcaption", null, fmtTime(f[1])));
        strip.appendChild(fig);
      });
      node.appendChild(strip);
    }
    return node;
  }

  function renderPager() {
    var total = pages();
    document.querySelectorAll(".pager").forEach(function (pager) {
      pager.querySelector(".prev").disabled = state.page <= 0;
      pager.querySelector(".next").disabled = state.page >= total - 1;
      pager.querySelector(".label").textContent = "page " + (state.page + 1) + " of " + total;
    });
  }

  function render() {
    if (state.page > pages() - 1) { state.page = pages() - 1; }
    if (state.page < 0) { state.page = 0; }
    var start = state.page * pageSize, n = matchCount();
    var slice = [];
    for (var k = start; k < Math.min(n, start + pageSize); k++) { slice.push(state.matches ? state.matches[k] : k); }
    var needed = [];
    slice.forEach(function (i) { var c = Math.floor(i / chunkSize); if (needed.indexOf(c) < 0) { needed.push(c); } });
    var mine = ++generation, query = state.query, page = state.page;
    return Promise.all(needed.map(function (c) { return load("videos", c); })).then(function (lists) {
      if (mine !== generation) { return; }  // a newer page or query came first
      var byChunk = {};
      needed.forEach(function (c, k) { byChunk[c] = lists[k]; });
      var frag = document.createDocumentFragment();
      slice.forEach(function (i) { frag.appendChild(card(byChunk[Math.floor(i / chunkSize)][i % chunkSize])); });
      keepRecent(needed);
      cards.textContent = "";
      cards.appendChild(frag);
      count.textContent = (query ? n + " of " + total + " videos match" : total + " videos") +
        (n ? " \u2014 showing " + (start + 1) + "\u2013" + (start + slice.length) : "");
      cards.setAttribute("data-query", query);
      cards.setAttribute("data-page", String(page));
      renderPager();
    }, function (error) {
      if (mine !== generation) { return; }
      cards.textContent = "";
      cards.appendChild(el("p", "problem", "The data of this page cannot be loaded (" + error.message +
        "); the report folder's data/ files must sit beside index.html."));
    });
  }

  function refresh() {
    var mine = ++searchGeneration;
    return filter().then(function (matches) {
      if (mine !== searchGeneration) { return; }
      state.matches = matches;
      return render();
    }, function (error) {
      if (mine !== searchGeneration) { return; }
      cards.textContent = "";
      cards.appendChild(el("p", "problem", "The search data cannot be loaded (" + error.message + ")."));
    });
  }

  function writeHash() {
    var parts = [];
    if (state.query) { parts.push("q=" + encodeURIComponent(state.query)); }
    if (state.page) { parts.push("page=" + (state.page + 1)); }
    var url = parts.length ? "#" + parts.join("&") : location.pathname + location.search;
    try { history.replaceState(null, "", url); } catch (e) { /* some browsers refuse it on file:// */ }
  }

  function decodePart(text) {
    // A hand-edited or cut link may hold a broken %-escape: keep the text as typed.
    try { return decodeURIComponent(text); } catch (e) { return text; }
  }

  function readHash() {
    var hash = location.hash.replace(/^#/, "");
    if (!/(^|&)(q|page)=/.test(hash)) { return; }
    state.query = ""; state.page = 0;
    hash.split("&").forEach(function (kv) {
      var i = kv.indexOf("="), key = kv.slice(0, i), value = decodePart(kv.slice(i + 1));
      if (key === "q") { state.query = value; }
      if (key === "page") { state.page = Math.max(0, (parseInt(value, 10) || 1) - 1); }
    });
  }

  function goto(page) { state.page = page; render(); writeHash(); cards.scrollIntoView({ block: "start" }); }

  document.querySelectorAll(".pager").forEach(function (pager) {
    pager.querySelector(".prev").addEventListener("click", function () { goto(state.page - 1); });
    pager.querySelector(".next").addEventListener("click", function () { goto(state.page + 1); });
  });
  var timer = null;
  search.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      state.query = search.value.trim(); state.page = 0; refresh(); writeHash();
    }, 120);
  });
  window.addEventListener("hashchange", function () {
    readHash(); search.value = state.query; refresh();
  });
  readHash();
  search.value = state.query;
  refresh().then(function () { document.body.setAttribute("data-ready", "1"); });
})();
"""
