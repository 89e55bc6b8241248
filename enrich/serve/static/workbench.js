// The review pages' keyboard and the path completion. On a listing: a accepts, p takes the parent level, 1-9 an
// alternative (or a suggestion), / types a path (Enter takes the first completion), s skips, u undoes your last
// decision, n takes your next listing, b goes back to the queue. In the queue: j and k move, Enter opens, n starts,
// / searches. On a confirmation page: Enter confirms, Esc cancels. Every action is an ordinary form or link.
(function () {
  "use strict";
  const $ = (selector) => document.querySelector(selector);
  const typing = (el) => el && (["INPUT", "SELECT", "TEXTAREA"].includes(el.tagName) || el.isContentEditable);
  let leaving = false; // one action per page: a second key press must not decide the next listing blind

  const act = (el) => {
    if (!el || leaving) return false;
    leaving = true;
    el.click();
    return true;
  };
  document.addEventListener("submit", (e) => {
    if (e.submitter && e.submitter.dataset.sent) e.preventDefault();
    if (e.submitter) e.submitter.dataset.sent = "1";
  });

  // -- the queue's rows --------------------------------------------------------------------------------------------
  const rows = Array.from(document.querySelectorAll("table.queue tbody tr[data-href]"));
  let selected = -1;
  const select = (i) => {
    if (!rows.length) return;
    selected = Math.max(0, Math.min(rows.length - 1, i));
    rows.forEach((row, j) => row.classList.toggle("selected", j === selected));
    rows[selected].scrollIntoView({ block: "nearest" });
  };
  rows.forEach((row) => row.addEventListener("click", (e) => {
    if (e.target.tagName !== "A") window.location = row.dataset.href;
  }));

  // -- completion over the known paths --------------------------------------------------------------------------------
  const input = $("#path");
  const list = $("#completions");
  let paths = null;
  let shown = [];
  let active = 0;
  const words = (text) => text.toLowerCase().split(/[\s>]+/).filter(Boolean);
  const complete = (query) => {
    const wanted = words(query);
    if (!wanted.length || !paths) return [];
    const exact = query.trim().toLowerCase().replace(/\s*>\s*/g, " > ");
    const last = wanted[wanted.length - 1];
    const hits = paths.filter((p) => { const low = p.toLowerCase(); return wanted.every((w) => low.includes(w)); });
    const rank = (p) => {
      const low = p.toLowerCase();
      const leaf = low.slice(low.lastIndexOf(" > ") + 1);
      return (low === exact ? 0 : 4) + (leaf.includes(last) ? 0 : 2) + (low.startsWith(wanted[0]) ? 0 : 1);
    };
    return hits.sort((a, b) => rank(a) - rank(b) || a.length - b.length || a.localeCompare(b)).slice(0, 8);
  };
  const render = () => {
    list.replaceChildren(...shown.map((path, i) => {
      const item = document.createElement("li");
      item.textContent = path;
      item.id = `completion-${i}`;
      item.setAttribute("role", "option");
      item.classList.toggle("active", i === active);
      item.addEventListener("mousedown", (e) => { e.preventDefault(); input.value = path; input.form.requestSubmit(); });
      return item;
    }));
    list.hidden = !shown.length;
    input.setAttribute("aria-expanded", String(shown.length > 0));
    if (shown.length) input.setAttribute("aria-activedescendant", `completion-${active}`);
  };
  if (input && list) {
    const load = fetch(input.dataset.paths, { credentials: "same-origin" }).then((r) => r.json()).then((p) => { paths = p; });
    input.addEventListener("input", () => { shown = complete(input.value); active = 0; render(); });
    input.addEventListener("focus", () => load.then(() => { shown = complete(input.value); active = 0; render(); }));
    input.addEventListener("blur", () => { list.hidden = true; });
    input.addEventListener("keydown", (e) => {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        if (!shown.length) return;
        active = (active + (e.key === "ArrowDown" ? 1 : shown.length - 1)) % shown.length;
        render();
        e.preventDefault();
      } else if (e.key === "Enter") {
        if (leaving) { e.preventDefault(); return; }
        if (shown.length && !list.hidden) input.value = shown[active]; // Enter takes the completion shown first
        leaving = true; // the form submits as it would
      } else if (e.key === "Escape") {
        list.hidden = true;
        input.blur();
      }
    });
  }

  // -- keys ------------------------------------------------------------------------------------------------------
  const keys = { a: "#accept", p: "#parent", s: "#skip", u: "#undo", n: "#next, #start", b: "#back" };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (typing(e.target)) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (e.key in keys && act($(keys[e.key]))) e.preventDefault();
    else if (e.key === "/") {
      const field = $("#path") || $("#search");
      if (field) { field.focus(); field.select(); e.preventDefault(); }
    } else if (/^[1-9]$/.test(e.key) && act($(`button[data-key="${e.key}"]`))) e.preventDefault();
    else if (e.key === "j") select(selected + 1);
    else if (e.key === "k") select(selected - 1);
    else if (e.key === "Enter" && selected >= 0) window.location = rows[selected].dataset.href;
    else if (e.key === "Escape" && act($("#cancel"))) e.preventDefault();
  });
  window.addEventListener("pageshow", () => { leaving = false; }); // back from the cache: keys work again

  // A photo the browser cannot load leaves no broken frame; a batch being enriched shows its progress, refreshing
  // while nobody is typing in the page.
  const photo = $("#photo");
  if (photo) {
    photo.addEventListener("error", () => { photo.hidden = true; });
    if (photo.complete && !photo.naturalWidth) photo.hidden = true; // failed before this script ran
  }
  const refresh = $("[data-refresh]");
  if (refresh) {
    setInterval(() => { if (!typing(document.activeElement)) window.location.reload(); }, 1000 * refresh.dataset.refresh);
  }
})();
