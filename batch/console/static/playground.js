// The mapping playground's editor (batch/console/playground.py): plain JS, no build step.
// Everything from the server is put in the page as text (textContent), never as HTML.
"use strict";

(function () {
  const root = document.getElementById("playground");
  if (!root) return;
  const feed = root.dataset.feed;
  const base = "/playground/feed/" + encodeURIComponent(feed);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const text = document.getElementById("mapping-text");
  const gutter = document.getElementById("gutter");
  const problemsList = document.getElementById("problems");
  const checkState = document.getElementById("check-state");
  const diffButton = document.getElementById("diff-button");
  const saveButton = document.getElementById("save-button");
  const saveState = document.getElementById("save-state");
  const diffBox = document.getElementById("diff");
  let baseHash = root.dataset.baseHash;
  let diffedText = null; // the text whose diff is shown: Save saves exactly that
  let checkTimer = null;
  let checkSeq = 0;
  let checking = false;
  let checkAgain = false;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function post(path, body, isForm) {
    const headers = { "X-CSRF-Token": csrf };
    if (!isForm) headers["Content-Type"] = "application/json";
    const response = await fetch(base + path, {
      method: "POST", headers, body: isForm ? body : JSON.stringify(body), credentials: "same-origin",
    });
    let payload;
    try { payload = await response.json(); } catch (e) { payload = { error: "HTTP " + response.status }; }
    return { status: response.status, ok: response.ok, payload };
  }

  // --- line numbers and problems on their lines ---------------------------------------------

  let marked = new Map(); // line -> messages

  function drawGutter() {
    const lines = text.value.split("\n").length;
    const spans = [];
    for (let i = 1; i <= lines; i++) {
      const span = el("span", { "data-line": String(i) }, String(i));
      const messages = marked.get(i);
      if (messages) {
        span.className = "bad";
        span.title = messages.join("\n");
      }
      spans.push(span);
    }
    gutter.replaceChildren(...spans);
    gutter.scrollTop = text.scrollTop;
  }

  function showProblems(problems) {
    marked = new Map();
    problemsList.replaceChildren();
    for (const problem of problems) {
      if (problem.line) {
        const list = marked.get(problem.line) || [];
        list.push(problem.message);
        marked.set(problem.line, list);
      }
      const where = problem.line ? "line " + problem.line + (problem.column ? ":" + problem.column : "") : "";
      const item = el("li", { class: "problem", "data-line": String(problem.line || "") },
        el("a", { href: "#", class: "where" }, where || "(file)"), " ", problem.text);
      item.querySelector("a").addEventListener("click", (event) => {
        event.preventDefault();
        if (problem.line) goToLine(problem.line);
      });
      problemsList.append(item);
    }
    drawGutter();
  }

  function goToLine(line) {
    const lines = text.value.split("\n");
    let offset = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
    text.focus();
    text.setSelectionRange(offset, offset + (lines[line - 1] || "").length);
  }

  async function check() {
    // one check at a time (the console refuses a second one of this session while one runs):
    // keystrokes meanwhile ask for one more check when the answer is in
    if (checking) { checkAgain = true; return; }
    checking = true;
    const seq = ++checkSeq;
    checkState.textContent = "checking…";
    checkState.className = "check";
    let result;
    try {
      result = await post("/validate", { text: text.value });
    } finally {
      checking = false;
    }
    if (checkAgain) { checkAgain = false; check(); return; }
    if (seq !== checkSeq) return; // a later keystroke's answer is coming
    if (!result.ok) {
      checkState.textContent = result.payload.error || "cannot check: HTTP " + result.status;
      checkState.className = "check bad";
      return;
    }
    showProblems(result.payload.problems);
    if (result.payload.ok) {
      checkState.textContent = "valid: the same checks as usageplace-batch validate";
      checkState.className = "check good";
    } else {
      const n = result.payload.problems.length;
      checkState.textContent = n + (n === 1 ? " problem" : " problems");
      checkState.className = "check bad";
    }
    root.dataset.checked = result.payload.ok ? "valid" : "problems";
  }

  text.addEventListener("input", () => {
    drawGutter();
    diffedText = null;
    saveButton.disabled = true;
    root.dataset.checked = "";
    clearTimeout(checkTimer);
    checkTimer = setTimeout(check, 300);
  });
  text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });
  // YAML is indented with spaces: Tab indents by two instead of leaving the editor
  text.addEventListener("keydown", (event) => {
    if (event.key !== "Tab" || event.shiftKey || event.ctrlKey || event.altKey || event.metaKey) return;
    event.preventDefault();
    text.setRangeText("  ", text.selectionStart, text.selectionEnd, "end");
    text.dispatchEvent(new Event("input"));
  });
  let savedText = text.value;
  window.addEventListener("beforeunload", (event) => {
    if (text.value !== savedText) event.preventDefault(); // the browser asks before an edit is lost
  });

  // --- what the edit changes ------------------------------------------------------------------

  function table(headers, rows, cls) {
    return el("table", { class: cls || "" },
      el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c))))));
  }

  function problemList(problems) {
    return el("ul", { class: "record-problems" }, ...problems.map((p) =>
      el("li", {}, p.field + (p.source ? " (" + p.source + (p.value !== null ? " = " + JSON.stringify(p.value) : "")
        + ")" : "") + ": " + p.message)));
  }

  // One side of a changed record: the changed fields' values (the whole event folded away), its
  // problems, or that this mapping does not make the record.
  function shown(side, fields) {
    if (side.event) {
      const changed = (fields || []).filter((name) => name in side.event);
      return el("div", {},
        changed.length ? el("dl", { class: "changed" }, ...changed.flatMap((name) =>
          [el("dt", {}, name), el("dd", {}, JSON.stringify(side.event[name]))])) : null,
        el("details", {}, el("summary", {}, "the event"), el("pre", { class: "record" },
          JSON.stringify(side.event, null, 1))));
    }
    if (side.problems) return problemList(side.problems);
    return el("span", { class: "sub" }, "not a record with this mapping");
  }

  function showDiff(diff) {
    const files = table(["file", "records before", "valid", "invalid", "filtered", "records after", "valid", "invalid",
      "filtered", "changed"], diff.files.map((f) => [f.name, f.before.records, f.before.valid, f.before.invalid,
      f.before.filtered, f.after.records, f.after.valid, f.after.invalid, f.after.filtered, f.changed]), "diff-files");
    const errors = diff.files.flatMap((f) => [["before", f.before.error], ["after", f.after.error]]
      .filter(([, e]) => e).map(([side, e]) => el("p", { class: "error-message" }, f.name + " (" + side + "): " + e)));
    const outcomes = diff.outcomes.length
      ? table(["before", "after", "records"], diff.outcomes.map((o) => [o.before, o.after, o.records]), "diff-outcomes")
      : el("p", { class: "sub" }, "no record changes outcome");
    const fields = diff.fields.length
      ? table(["event field", "records in which it changes"], diff.fields.map((f) => [f.field, f.records]),
        "diff-fields")
      : el("p", { class: "sub" }, "no event field changes");
    const samples = diff.samples.map((s) => [s.file + ":" + s.line, s.fields.join(", "),
      el("div", {}, el("div", { class: "outcome" }, s.before.outcome), shown(s.before, s.fields)),
      el("div", {}, el("div", { class: "outcome" }, s.after.outcome), shown(s.after, s.fields))]);
    diffBox.replaceChildren(
      el("h2", {}, "What the edit changes"),
      el("p", { id: "diff-summary" }, diff.changed + " of " + diff.compared + " records change in the "
        + diff.files.length + " last archived file(s)."),
      files, ...errors,
      el("h3", {}, "Outcomes"), outcomes,
      el("h3", {}, "Event fields"), fields,
      el("h3", {}, "Before and after" + (diff.changed > diff.samples.length
        ? " (the first " + diff.samples.length + " of " + diff.changed + ")" : "")),
      samples.length ? el("div", { class: "scroll" }, table(["record", "fields", "before", "after"], samples,
        "diff-samples")) : el("p", { class: "sub" }, "nothing changes"));
  }

  diffButton.addEventListener("click", async () => {
    const edited = text.value;
    diffButton.disabled = true;
    diffBox.replaceChildren(el("p", { class: "sub" }, "mapping the archived files with both mappings…"));
    try {
      const result = await post("/diff", { text: edited });
      if (!result.ok) {
        diffBox.replaceChildren(el("p", { class: "error-message", id: "diff-error" }, result.payload.error));
        if (result.payload.problems) showProblems(result.payload.problems);
        return;
      }
      showDiff(result.payload);
      if (text.value === edited) {
        diffedText = edited;
        saveButton.disabled = false;
      }
    } finally {
      diffButton.disabled = false;
    }
  });

  saveButton.addEventListener("click", async () => {
    if (diffedText === null) return;
    saveButton.disabled = true;
    saveState.textContent = "saving…";
    const result = await post("/save", { text: diffedText, base_hash: baseHash });
    if (!result.ok) {
      saveState.textContent = result.payload.error;
      saveState.className = "bad";
      if (result.payload.problems) showProblems(result.payload.problems);
      return;
    }
    baseHash = result.payload.hash;
    savedText = diffedText;
    root.dataset.baseHash = baseHash;
    saveState.className = "good";
    saveState.textContent = "Saved " + result.payload.saved
      + (result.payload.kept ? " (the earlier version kept as " + result.payload.kept + ")" : "")
      + ". The service uses it from its next reload.";
    showVersions(result.payload.versions);
  });

  // --- earlier versions -------------------------------------------------------------------------

  const versionsBox = document.getElementById("versions");

  function showVersions(names) {
    versionsBox.replaceChildren();
    if (!names.length) return;
    versionsBox.append("Earlier versions kept (load one into the editor to go back to it): ");
    for (const name of names) {
      versionsBox.append(el("button", { type: "button", class: "link version",
        "data-number": name.slice(name.lastIndexOf(".") + 1) }, name), " ");
    }
  }

  versionsBox.addEventListener("click", async (event) => {
    const button = event.target.closest("button.version");
    if (!button) return;
    const response = await fetch(base + "/version/" + button.dataset.number, { credentials: "same-origin" });
    const payload = await response.json();
    if (!response.ok) {
      saveState.className = "bad";
      saveState.textContent = payload.error;
      return;
    }
    text.value = payload.text;
    text.dispatchEvent(new Event("input"));
    saveState.className = "";
    saveState.textContent = payload.version + " is in the editor: see what it changes, then save to go back to it.";
  });

  // --- preview and a new mapping from a sample --------------------------------------------------

  const previewBox = document.getElementById("preview");
  document.getElementById("preview-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    form.append("text", text.value);
    previewBox.replaceChildren(el("p", { class: "sub" }, "mapping…"));
    const result = await post("/preview", form, true);
    if (!result.ok) {
      previewBox.replaceChildren(el("p", { class: "error-message" }, result.payload.error));
      return;
    }
    const p = result.payload;
    const rows = p.records.map((r) => [String(r.line), r.event ? "valid" : "invalid",
      r.event ? el("code", { class: "record" }, JSON.stringify(r.event)) : problemList(r.problems)]);
    previewBox.replaceChildren(
      el("p", { id: "preview-summary" }, p.file + ": " + p.counts.records + " records, " + p.counts.valid + " valid, "
        + p.counts.invalid + " invalid, " + p.counts.filtered + " filtered"
        + (p.records.length < p.counts.records ? " (the first " + p.records.length + " shown)" : "")),
      p.counts.error ? el("p", { class: "error-message" }, p.counts.error) : null,
      el("div", { class: "scroll" }, table([p.sheet ? "row" : "line", "outcome", "event / problems"], rows,
        "preview-records")));
  });

  const detectedBox = document.getElementById("detected");
  document.getElementById("new-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = await post("/new", new FormData(event.target), true);
    if (!result.ok) {
      detectedBox.replaceChildren(el("p", { class: "error-message" }, result.payload.error));
      return;
    }
    const d = result.payload.detected;
    const delimiter = d.delimiter === "\t" ? "tab" : d.delimiter;
    detectedBox.replaceChildren(
      el("dl", { class: "facts", id: "detected-facts" },
        el("dt", {}, "format"), el("dd", {}, d.format + (d.container ? " (in a " + d.container + " file)" : "")),
        el("dt", {}, "encoding"), el("dd", { id: "detected-encoding" }, d.encoding || "—"),
        el("dt", {}, "delimiter"), el("dd", { id: "detected-delimiter" }, delimiter || "—"),
        el("dt", {}, "header"), el("dd", { id: "detected-header" },
          d.header_line ? "line " + d.header_line + ": " + d.columns.join(", ") : "none found"),
        ...d.notes.flatMap((note) => [el("dt", {}, "note"), el("dd", {}, note)])),
      el("p", { class: "sub" }, "The editor now holds a first mapping for " + result.payload.sample
        + ": check it in the preview, see what it changes, then save."));
    text.value = result.payload.text;
    text.dispatchEvent(new Event("input"));
  });

  drawGutter();
  check();
})();
