// The PixelWizard run report: renders window.PIXELWIZARD_REPORT (data.js) one page of prompts at a time, so the
// DOM stays small at 10,000 prompts; videos load their metadata only when their page is shown, never autoplay.
// Every number is shown rounded, with its exact value in data-value.
"use strict";

const R = window.PIXELWIZARD_REPORT;
const PER_PAGE = 24;
const PRECEDENCE = ["failed", "corrupt", "stale", "blocked", "missing", "held", "done"];  // a prompt's overall state
const ui = {view: "prompts", page: 0, sort: "order", desc: false, filter: "all", query: "",
            selected: new Set(R.run.only || [])};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.flat().filter(c => c !== null && c !== undefined));
  return node;
}

function fmt(x) {
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  return Math.abs(x) >= 1000 ? x.toFixed(0) : Number(x.toPrecision(4)).toString();
}

function num(x, suffix = "") {
  if (x === null || x === undefined) return el("span", {class: "num", text: "·"});
  return el("span", {class: "num", "data-value": String(x), title: String(x), text: fmt(x) + suffix});
}

function duration(s) {
  if (s === null || s === undefined) return "·";
  if (s < 60) return `${fmt(s)} s`;
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = Math.round(s % 60);
  return h ? `${h} h ${m} min` : `${m} min ${sec} s`;
}

function badge(name, state, why) {
  return el("span", {class: `badge state-${state}`, title: why || null, "data-stage": name, "data-state": state,
                     text: `${name}: ${state}`});
}

function outputsOf(p) {
  return [...Object.values(p.stages), ...Object.values(p.decodes)];
}

function overall(p) {
  const states = new Set(outputsOf(p).map(o => o.state));
  return PRECEDENCE.find(s => states.has(s)) || "done";
}

// ---- filtering, sorting, paging ------------------------------------------------------------------------------

function sortKeys() {
  const keys = [["order", "prompt file order"], ["id", "id"], ["seconds", "total seconds"], ["state", "state"]];
  for (const s of R.stages) keys.push([`stage:${s}`, `${s} seconds`]);
  for (const tag of R.tags) {
    keys.push([`decode-seconds:${tag}`, `decode ${tag} seconds`]);
    for (const m of R.metrics) keys.push([`metric:${tag}:${m}`, `${m} (${tag})`]);
  }
  return keys;
}

function sortValue(p, key) {
  const [kind, a] = key.split(":");
  if (kind === "id") return p.id;
  if (kind === "seconds") return p.seconds;
  if (kind === "state") return PRECEDENCE.indexOf(overall(p));
  if (kind === "stage") return p.stages[a] ? p.stages[a].seconds : undefined;
  if (kind === "decode-seconds") return p.decodes[a] ? p.decodes[a].seconds : undefined;
  if (kind === "metric") {
    const metrics = p.decodes[a] && p.decodes[a].metrics;
    return metrics ? metrics[key.slice(kind.length + a.length + 2)] : undefined;
  }
  return undefined;
}

function chosen() {
  const q = ui.query.trim().toLowerCase();
  let list = R.prompts.filter(p => {
    if (q && !p.id.toLowerCase().includes(q) && !p.text.toLowerCase().includes(q)) return false;
    if (ui.filter === "all") return true;
    if (ui.filter === "ticked") return ui.selected.has(p.id);
    const state = overall(p);
    return ui.filter === "not-done" ? state !== "done" : state === ui.filter;
  });
  if (ui.sort !== "order") {
    const present = [], absent = [];
    for (const p of list) {
      const value = sortValue(p, ui.sort);
      (value === undefined || value === null ? absent : present).push([value, p]);
    }
    present.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0) * (ui.desc ? -1 : 1));
    list = [...present, ...absent].map(([, p]) => p);  // prompts without the number last, in either direction
  } else if (ui.desc) {
    list = list.slice().reverse();
  }
  return list;
}

function controls(withSort) {
  const search = el("input", {type: "search", placeholder: "search id or text", value: ui.query,
                              onchange: e => { ui.query = e.target.value; ui.page = 0; render(); }});
  const filters = [["all", "all prompts"], ["done", "done"], ["not-done", "not done"], ["failed", "failed"],
                   ["stale", "stale"], ["blocked", "blocked"], ["missing", "missing"],
                   ["held", "held (--until, --only)"],
                   ["ticked", "ticked in the gate"]];
  const filter = el("select", {id: "filter", onchange: e => { ui.filter = e.target.value; ui.page = 0; render(); }},
                    filters.map(([v, t]) => el("option", {value: v, text: t, selected: v === ui.filter})));
  const parts = [search, filter];
  if (withSort) {
    parts.push(el("label", {text: "sort by "},
      el("select", {id: "sort", onchange: e => { ui.sort = e.target.value; ui.page = 0; render(); }},
         sortKeys().map(([v, t]) => el("option", {value: v, text: t, selected: v === ui.sort})))));
    const desc = el("input", {type: "checkbox", id: "desc", checked: ui.desc,
                              onchange: e => { ui.desc = e.target.checked; render(); }});
    parts.push(el("label", {}, desc, " descending"));
  }
  return el("div", {class: "controls"}, parts);
}

function pager(total) {
  const pages = Math.max(1, Math.ceil(total / PER_PAGE));
  ui.page = Math.min(ui.page, pages - 1);
  const go = page => () => { ui.page = page; render(); window.scrollTo(0, 0); };
  const first = ui.page * PER_PAGE;
  return el("div", {class: "pager"},
    el("button", {type: "button", text: "‹ previous", disabled: ui.page === 0, onclick: go(ui.page - 1)}),
    el("span", {id: "page-info", text: total ? `${first + 1}–${Math.min(first + PER_PAGE, total)} of ${total} ` +
                                              `(page ${ui.page + 1} of ${pages})` : "no prompts match"}),
    el("button", {type: "button", text: "next ›", disabled: ui.page >= pages - 1, onclick: go(ui.page + 1)}));
}

function page(list) {
  return list.slice(ui.page * PER_PAGE, (ui.page + 1) * PER_PAGE);
}

// ---- the prompts view ----------------------------------------------------------------------------------------

function video(src, label) {
  if (!src) return el("div", {class: "missing-media", text: `${label}: not made`});
  return el("video", {src, controls: true, preload: "metadata", muted: true, playsInline: true, loop: true});
}

function metricsTable(metrics) {
  const names = Object.keys(metrics || {});
  if (!names.length) return el("p", {class: "why", text: "no quality numbers in this video's JSON"});
  return el("table", {class: "metrics"}, names.map(m =>
    el("tr", {}, el("th", {text: m}), el("td", {class: "num", "data-metric": m}, num(metrics[m])))));
}

function decodeFigure(p, tag) {
  const d = p.decodes[tag];
  if (d.state === "held") return el("figure", {class: "decode", "data-tag": tag},
                                    el("figcaption", {}, `decode ${tag} `, badge("decode", d.state, d.why), ` ${d.why}`),
                                    video(null, "video"));
  return el("figure", {class: "decode", "data-tag": tag},
    el("figcaption", {}, `decode ${tag} `, badge("decode", d.state, d.why), d.seconds !== undefined ? " " : null,
       d.seconds !== undefined ? num(d.seconds, " s") : null),
    video(d.video, "video"),
    d.sheet ? el("img", {src: d.sheet, loading: "lazy", alt: `contact sheet of ${p.id} (${tag})`}) : null,
    metricsTable(d.metrics));
}

function provenance(p) {
  const rows = [];
  const stageRows = [...R.stages.map(s => [s, s, p.stages[s], R.run.settings]),
                     ...R.tags.map(t => [`decode ${t}`, "decode", p.decodes[t], R.run.decodes[t]])];
  for (const [label, stage, o, values] of stageRows) {
    const spec = R.run.stages[stage];
    if (!spec || (stage === "input" && !o)) continue;
    const settings = o && o.settings  // a prompt with a source file: its own settings, as its clip runs them
      ? Object.entries(o.settings).map(([n, v]) => `${n}=${JSON.stringify(v)}`)
      : spec.settings.map(n => `${n}=${JSON.stringify(n in values ? values[n] : R.run.settings[n])}`);
    const checkpoints = ((o && o.checkpoints) || spec.checkpoints).map(
      c => `${c} ${R.run.checkpoints[c].slice(0, 12)}`);
    rows.push(el("tr", {"data-stage": label},
      el("td", {text: label}),
      el("td", {}, badge(label, o.state, o.why)),
      el("td", {class: "num"}, o && o.seconds !== undefined ? num(o.seconds, " s") : "·"),
      el("td", {class: "mono seed", text: o && o.seed !== undefined ? o.seed : ""}),
      el("td", {class: "mono", text: settings.join(" ")}),
      el("td", {class: "mono", text: checkpoints.join(" ")}),
      el("td", {class: "why", text: o && o.why ? o.why : ""})));
  }
  return el("table", {class: "grid stages"},
    el("tr", {}, ["stage", "state", "seconds", "seed", "settings", "checkpoint (sha256)", "why"].map(
      h => el("th", {text: h}))), rows);
}

function sourceLine(p) {
  const s = p.source;
  if (!s) return null;
  const what = s.kind === "video"
    ? `${s.frames} frames at ${fmt(fraction(s.rate))} fps from ${fmt(s.start)} s, ${s.width}x${s.height}` +
      (s.rotation ? `, rotated ${s.rotation}°` : "")
    : s.kind === "image" ? `the first frame, ${s.width}x${s.height}` : `${s.frames} frames`;
  return el("p", {class: "meta source"}, `${s.kind} `, el("span", {class: "mono", text: s.file}),
            ` (${what}; sha256 `, el("span", {class: "mono", title: s.sha256, text: s.sha256.slice(0, 12)}), ")");
}

function fraction(text) {
  const [a, b] = String(text).split("/").map(Number);
  return b ? a / b : a;
}

function inputFigure(p) {
  const input = p.stages.input;
  if (!input) return null;
  return el("figure", {class: "input"},
    el("figcaption", {}, "input clip ", badge("input", input.state, input.why)),
    video(input.video, "input clip"),
    input.sheet ? el("img", {src: input.sheet, loading: "lazy", alt: `contact sheet of ${p.id}'s input`}) : null,
    metricsTable(input.metrics));
}

function promptCard(p) {
  const preview = p.stages.preview;
  const outputs = [...Object.entries(p.stages), ...Object.entries(p.decodes).map(([t, o]) => [`decode ${t}`, o])];
  const problems = outputs.filter(([, o]) => o.state !== "done");
  return el("article", {class: "prompt", "data-id": p.id},
    el("header", {}, el("h3", {text: p.id}), badge("state", overall(p))),
    el("p", {class: "text", text: p.text || (p.source ? "(no prompt text: the empty prompt)" : "")}),
    sourceLine(p),
    problems.length ? el("ul", {class: "problems"}, problems.map(([name, o]) => el("li", {"data-stage": name},
      badge(name, o.state), o.why ? ` ${o.why}` : ""))) : null,
    el("p", {class: "meta"}, "seed ", el("span", {class: "mono seed", text: p.seed}), " · total ",
       p.seconds !== null ? num(p.seconds, " s") : "·",
       p.negative_prompt !== undefined ? ` · negative prompt: ${p.negative_prompt}` : ""),
    el("div", {class: "media"},
      inputFigure(p),
      preview ? el("figure", {class: "preview"}, el("figcaption", {}, "LR preview ", badge("preview", preview.state)),
                   video(preview.video, "LR preview"), metricsTable(preview.metrics)) : null,
      R.tags.map(tag => decodeFigure(p, tag))),
    el("details", {}, el("summary", {text: "stages: state, seconds, seed, settings, checkpoints"}), provenance(p)));
}

function promptsView() {
  const list = chosen();
  return [controls(true), pager(list.length), el("div", {id: "prompt-list"}, page(list).map(promptCard)),
          pager(list.length)];
}

// ---- the preview gate ----------------------------------------------------------------------------------------

function saveSelection() {
  const ids = R.prompts.filter(p => ui.selected.has(p.id)).map(p => p.id);
  const url = URL.createObjectURL(new Blob([ids.map(i => i + "\n").join("")], {type: "text/plain"}));
  const link = el("a", {href: url, download: "selection.txt"});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function gateView() {
  const list = chosen();
  const shown = page(list);
  const tick = (ids, on) => () => { ids.forEach(i => on ? ui.selected.add(i) : ui.selected.delete(i)); render(); };
  const save = el("button", {type: "button", id: "save-selection", onclick: saveSelection});
  const count = () => {
    save.disabled = ui.selected.size === 0;
    save.textContent = `save selection.txt (${ui.selected.size} ticked)`;
  };
  count();
  const cards = shown.map(p => {
    const preview = p.stages.preview || {};
    const card = el("div", {class: ui.selected.has(p.id) ? "pick ticked" : "pick", "data-id": p.id});
    const box = el("input", {type: "checkbox", value: p.id, checked: ui.selected.has(p.id), onchange: e => {
      e.target.checked ? ui.selected.add(p.id) : ui.selected.delete(p.id);
      card.classList.toggle("ticked", e.target.checked);
      count();
    }});
    card.append(video(preview.video, "LR preview"), el("label", {}, box, " ", el("b", {class: "mono", text: p.id})),
                el("div", {class: "text", text: p.text}));
    return card;
  });
  return [
    el("p", {}, "Tick the prompts worth the HR stage, save the selection, then run the same ",
       el("code", {text: "pixelwizard generate"}), " command again with ", el("code", {text: "--only selection.txt"}),
       ": HR and decode run for the ticked prompts; the others stay at LR and nothing is deleted."),
    controls(false),
    el("div", {class: "controls"},
      el("button", {type: "button", id: "tick-page", text: "tick this page",
                    onclick: tick(shown.map(p => p.id), true)}),
      el("button", {type: "button", text: "untick this page", onclick: tick(shown.map(p => p.id), false)}),
      el("button", {type: "button", text: "untick all", onclick: () => { ui.selected.clear(); render(); }}), save),
    pager(list.length), el("div", {class: "gate"}, cards), pager(list.length)];
}

// ---- the batch view ------------------------------------------------------------------------------------------

function batchView() {
  const B = R.batch;
  const states = R.states;
  const goTo = id => () => { ui.query = id; ui.filter = "all"; location.hash = "prompts"; };
  const stageRows = B.stages.map(s => el("tr", {"data-label": s.label},
    el("td", {text: s.label}), el("td", {class: "num"}, num(s.total)),
    states.map(st => el("td", {class: `num state-${st}`, "data-state": st}, s.counts[st] ? num(s.counts[st]) : "·")),
    el("td", {class: "num", "data-key": "seconds"}, num(s.seconds)),
    el("td", {class: "num", "data-key": "mean_s"}, num(s.mean_s)),
    el("td", {class: "num", "data-key": "max_s"}, num(s.max_s))));
  const settingRows = Object.entries(R.run.settings).map(([k, v]) =>
    el("tr", {}, el("th", {text: k}), el("td", {class: "mono", text: JSON.stringify(v)})));
  const configRows = Object.entries(R.run.config).filter(([k]) => k !== "settings").map(([k, v]) =>
    el("tr", {}, el("th", {text: k}), el("td", {class: "mono", text: JSON.stringify(v)})));
  const decodeNames = Object.keys(R.run.decodes[R.main_tag]);
  return [
    el("p", {id: "throughput"}, num(B.videos), ` videos done (decode ${R.main_tag}). `,
       B.busy_s && B.videos ? [`Prompts were being computed for ${duration(B.busy_s)} of wall time (the union `,
                   "of every current output's computation, job start-up excluded): ", num(B.videos_per_hour),
                   " videos per hour; ",
                   `from the first start to the last end ${duration(B.span_s)}: `, num(B.videos_per_hour_span),
                   " videos per hour (includes start-up, and pauses between runs)."]
                : "No timed videos of this decode setting yet."),
    el("h2", {text: "Outputs per stage and state, seconds of the current outputs"}),
    el("table", {class: "grid", id: "stage-table"},
      el("tr", {}, ["stage", "outputs", ...states, "total s", "s per prompt", "slowest s"].map(
        (h, i) => el("th", {class: i ? "num" : "", text: h}))), stageRows),
    el("h2", {text: `Slowest prompts (all stages, seconds)`}),
    B.slowest.length ? el("table", {class: "grid", id: "slowest"}, B.slowest.map(s => el("tr", {},
      el("td", {}, el("button", {type: "button", class: "linklike mono", text: s.id, onclick: goTo(s.id)})),
      el("td", {class: "num"}, num(s.seconds))))) : el("p", {text: "nothing timed yet"}),
    el("h2", {text: `Failed (${B.failed.length})`}),
    B.failed.length ? el("table", {class: "grid", id: "failed"}, B.failed.slice(0, 200).map(f => el("tr", {},
      el("td", {text: f.label}),
      el("td", {}, el("button", {type: "button", class: "linklike mono", text: f.id, onclick: goTo(f.id)})),
      el("td", {class: "why", text: f.why})))) : el("p", {text: "no failures"}),
    B.failed.length > 200 ? el("p", {text: `and ${B.failed.length - 200} more (filter the prompts by "failed")`})
                          : null,
    el("h2", {text: "Decode settings (side by side in the prompts view)"}),
    el("table", {class: "grid", id: "decodes"},
      el("tr", {}, el("th", {text: "tag"}), decodeNames.map(n => el("th", {text: n}))),
      R.tags.map(t => el("tr", {}, el("td", {class: "mono", text: t + (t === R.main_tag ? " (the run's)" : "")}),
                         decodeNames.map(n => el("td", {class: "mono", text: String(R.run.decodes[t][n])}))))),
    el("h2", {text: `Settings (preset ${R.run.preset})`}),
    el("table", {class: "grid", id: "settings"}, settingRows),
    el("h2", {text: "Checkpoints (sha256 of their contents)"}),
    el("table", {class: "grid", id: "checkpoints"}, Object.entries(R.run.checkpoints).map(([role, digest]) =>
      el("tr", {}, el("th", {text: role}), el("td", {class: "mono", text: digest})))),
    el("h2", {text: "Run configuration"}),
    el("table", {class: "grid", id: "config"}, configRows)];
}

// ---- the frame -----------------------------------------------------------------------------------------------

const VIEWS = {prompts: promptsView, gate: gateView, batch: batchView};

function render() {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.view === ui.view);
  }
  document.getElementById("view").replaceChildren(...VIEWS[ui.view]().filter(c => c !== null));
}

document.getElementById("run").textContent =
  `${R.out} · preset ${R.run.preset} · ${R.prompts.length.toLocaleString("en-US")} prompts · ` +
  `decode settings ${R.tags.join(", ")} · made ${R.made} by PixelWizard ${R.version}`;
function show(view) {
  ui.view = VIEWS[view] ? view : "prompts";
  ui.page = 0;
  render();
}

for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => { location.hash = button.dataset.view; });
}
window.addEventListener("hashchange", () => show(location.hash.slice(1)));
show(location.hash.slice(1));
