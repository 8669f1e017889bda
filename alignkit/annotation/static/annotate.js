// Keyboard shortcuts for the annotation pages. Everything also works with the mouse alone; this file
// only turns key presses into the clicks and choices a mouse would make.
"use strict";

function typing(target) {
  return target.closest("input, textarea, select") !== null;
}

function keyName(event) {
  return event.key.length === 1 ? event.key.toLowerCase() : event.key.toLowerCase();
}

// Ranking: pressing response letters from best to worst gives ranks 1, 2, 3, ...
function rankByKey(key) {
  const selects = Array.from(document.querySelectorAll("select[data-rank-key]"));
  if (selects.length === 0) return false;
  if (key === "backspace") {
    selects.forEach((s) => { s.value = ""; });
    return true;
  }
  const select = selects.find((s) => s.dataset.rankKey === key);
  if (!select || select.value !== "") return select !== undefined;
  const used = selects.filter((s) => s.value !== "").length;
  select.value = String(used + 1);
  return true;
}

// Rating: a digit scores the first response still without a score (0 means 10 on a scale that has 10).
function rateByKey(key) {
  const groups = Array.from(document.querySelectorAll("[data-score-group]"));
  if (groups.length === 0 || !/^[0-9]$/.test(key)) return false;
  const open = groups.find((g) => g.querySelector("input:checked") === null) || groups[groups.length - 1];
  let input = open.querySelector(`input[value="${key}"]`);
  if (key === "0" && open.querySelector('input[value="10"]')) input = open.querySelector('input[value="10"]');
  if (!input) return false;
  input.checked = true;
  return true;
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
  const key = keyName(event);
  if (rankByKey(key) || rateByKey(key)) {
    event.preventDefault();
    return;
  }
  const target = Array.from(document.querySelectorAll("[data-keys]"))
    .find((el) => el.dataset.keys.split(" ").includes(key));
  if (target) {
    event.preventDefault();
    if (target.form && !target.form.checkValidity()) {
      target.form.reportValidity();
      return;
    }
    target.click();
  }
});

// One answer per page: a second click or key press while the first is on its way sends nothing.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.sent === "1") {
    event.preventDefault();
    return;
  }
  form.dataset.sent = "1";
});
