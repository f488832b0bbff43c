/* peftkb site: render math with the vendored KaTeX, filter/sort the comparison table, pick an evidence plot.
   Plain JavaScript, no dependencies beyond the page. */
(function () {
  "use strict";

  /* Math: pymdownx.arithmatex (generic mode) leaves \( \) or \[ \] inside .arithmatex elements. */
  function renderMath(root) {
    if (typeof katex === "undefined") return;
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      if (el.dataset.pkMath) return;
      var tex = el.textContent.trim();
      var display = el.tagName === "DIV" || tex.indexOf("\\[") === 0;
      tex = tex.replace(/^\\[(\[]/, "").replace(/\\[)\]]$/, "");
      try {
        katex.render(tex, el, { displayMode: display, throwOnError: false, output: "htmlAndMathml" });
        el.dataset.pkMath = "1";
      } catch (err) {
        el.title = String(err);
      }
    });
  }

  /* Comparison table */
  function setupCompare(box) {
    if (box.dataset.pkReady) return;
    box.dataset.pkReady = "1";
    var rows = Array.prototype.slice.call(box.querySelectorAll("tbody tr"));
    var count = box.querySelector("[data-count]");
    var empty = box.querySelector("[data-empty]");
    var selects = box.querySelectorAll("select[data-filter]");
    var text = box.querySelector("input[data-filter=text]");
    var flags = box.querySelectorAll("input[data-flag]");

    function value(name) {
      var el = box.querySelector("[data-filter=" + name + "]");
      return el ? el.value : "";
    }

    function apply() {
      var cat = value("cat"), merge = value("mergeable"), insert = value("insert");
      var impl = value("impl"), survey = value("survey");
      var words = (text && text.value || "").trim().toLowerCase();
      var need = Array.prototype.filter.call(flags, function (f) { return f.checked; })
        .map(function (f) { return f.dataset.flag; });
      var shown = 0;
      rows.forEach(function (tr) {
        var d = tr.dataset;
        var ok = (!cat || d.cat === cat || d.cat.indexOf(cat + "/") === 0)
          && (!merge || d.mergeable === merge)
          && (!insert || d.insert.split(" ").indexOf(insert) >= 0)
          && (!impl || d.impl.split(" ").indexOf(impl) >= 0)
          && (!survey || d.survey === survey)
          && (!words || d.text.indexOf(words) >= 0)
          && need.every(function (f) { return d.flags.split(" ").indexOf(f) >= 0; });
        tr.hidden = !ok;
        if (ok) shown += 1;
      });
      if (count) count.textContent = shown + " of " + rows.length + " methods";
      if (empty) empty.hidden = shown !== 0;
    }

    selects.forEach(function (s) { s.addEventListener("change", apply); });
    flags.forEach(function (f) { f.addEventListener("change", apply); });
    if (text) text.addEventListener("input", apply);
    var reset = box.querySelector("[data-reset]");
    if (reset) reset.addEventListener("click", function () {
      selects.forEach(function (s) { s.value = ""; });
      flags.forEach(function (f) { f.checked = false; });
      if (text) text.value = "";
      apply();
    });

    /* sorting: click a heading; click again to reverse */
    var tbody = box.querySelector("tbody");
    box.querySelectorAll("th[data-sort]").forEach(function (th) {
      th.tabIndex = 0;
      function sort() {
        var key = th.dataset.sort, numeric = th.dataset.type === "number";
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        box.querySelectorAll("th[data-sort]").forEach(function (o) { o.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        rows.sort(function (a, b) {
          var x = a.dataset[key] || "", y = b.dataset[key] || "";
          var c = numeric ? (Number(x) - Number(y)) : x.localeCompare(y);
          return (c || a.dataset.name.localeCompare(b.dataset.name)) * dir;
        });
        rows.forEach(function (tr) { tbody.appendChild(tr); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
      });
    });
    apply();
  }

  /* Measured evidence on the Compare page: one source and setting at a time, picked with a select.
     Without JavaScript every group stays visible (the select stays hidden). */
  function setupEvidence(box) {
    if (box.dataset.pkReady) return;
    box.dataset.pkReady = "1";
    var select = box.querySelector("select[data-evidence-select]");
    var groups = box.querySelectorAll("[data-evidence-group]");
    if (!select || groups.length < 2) return;
    function show() {
      groups.forEach(function (g) { g.hidden = g.dataset.evidenceGroup !== select.value; });
    }
    box.querySelector("[data-evidence-pick]").hidden = false;
    select.addEventListener("change", show);
    show();
  }

  /* Search: when the query is exactly a method's name or alias (as a key: see search_key in the site's
     renderer), put that method first and make it the one Enter opens (Material opens the result with the
     highest data-md-score). The index already ranks exact names first; this covers aliases. */
  function searchKey(text) {
    return text.normalize("NFKC").toLowerCase().replace(/\+/g, "plus").replace(/[^\p{L}\p{N}]/gu, "");
  }

  function setupSearchOrder() {
    var list = document.querySelector(".md-search-result__list");
    var input = document.querySelector("input.md-search__input");
    if (!list || !input || list.dataset.pkOrder) return;
    list.dataset.pkOrder = "1";
    function reorder() {
      var page = (window.peftkbSearchKeys || {})[searchKey(input.value)];
      if (!page) return;
      var items = list.querySelectorAll(":scope > li");
      for (var i = 0; i < items.length; i++) {
        var link = items[i].querySelector("a[href]");
        if (!link || new URL(link.href, location.href).pathname.slice(-page.length - 1) !== "/" + page) continue;
        if (link.firstElementChild) link.firstElementChild.setAttribute("data-md-score", "1e300");
        if (list.firstElementChild !== items[i]) list.insertBefore(items[i], list.firstElementChild);
        return;
      }
    }
    new MutationObserver(reorder).observe(list, { childList: true });
  }

  function init() {
    setupSearchOrder();
    renderMath(document.body);
    document.querySelectorAll("[data-pk-compare]").forEach(setupCompare);
    document.querySelectorAll("[data-pk-evidence]").forEach(setupEvidence);
  }

  if (typeof document$ !== "undefined" && document$.subscribe) {
    document$.subscribe(init);
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
