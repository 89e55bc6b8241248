// Keyboard shortcuts for the review pages. On a listing: a accepts, 1-9 pick an alternative, s skips, / types a
// path. In the queue: j and k move, Enter opens. Nothing here talks to the server but the forms themselves.
(function () {
  const typing = (e) => ["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName);
  const click = (selector) => { const el = document.querySelector(selector); if (el) { el.click(); return true; } return false; };
  const rows = Array.from(document.querySelectorAll("table.queue tbody tr"));
  let selected = -1;
  const select = (i) => {
    if (!rows.length) return;
    selected = Math.max(0, Math.min(rows.length - 1, i));
    rows.forEach((row, j) => row.classList.toggle("selected", j === selected));
    rows[selected].scrollIntoView({ block: "nearest" });
  };
  document.addEventListener("keydown", (e) => {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "a" && click("#accept")) e.preventDefault();
    else if (e.key === "s" && click("#skip")) e.preventDefault();
    else if (e.key === "/") { const path = document.getElementById("path"); if (path) { path.focus(); e.preventDefault(); } }
    else if (/^[1-9]$/.test(e.key) && click(`button.pick[data-key="${e.key}"]`)) e.preventDefault();
    else if (e.key === "j") select(selected + 1);
    else if (e.key === "k") select(selected - 1);
    else if (e.key === "Enter" && selected >= 0) window.location = rows[selected].dataset.href;
  });
})();
