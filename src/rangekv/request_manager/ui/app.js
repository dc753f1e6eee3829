// rangekv dashboard: polls /v1/cluster/status and redraws. Vanilla JS, no dependencies.
//
// Safety: every string from the cluster (table names, keys, addresses, reasons) goes into the
// page as a text node or through setAttribute of a fixed, harmless attribute; nothing is ever
// assigned to innerHTML. Polls never overlap: the next one is scheduled when the last ends.
"use strict";

const STATUS_URL = "/v1/cluster/status";
const POLL_INTERVAL_MS = 2000;
const POLL_TIMEOUT_MS = 5000;
const DECISIONS_SHOWN = 20;

let lastGood = null; // time of the last successful poll

// el("td", {class: "num"}, "text", childNode, ...): an element; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) {
      node.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  return node;
}

function replace(id, ...children) {
  const target = document.getElementById(id);
  target.replaceChildren(...children.flat().filter((c) => c));
}

function dash(value) {
  return value === null || value === undefined || value === "" ? "–" : String(value);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
}

function count(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US");
}

function rate(n) {
  if (n === null || n === undefined) return "–";
  return n >= 100 ? n.toFixed(0) : n.toFixed(1);
}

function badge(kind, text) {
  return el("span", { class: "badge " + kind }, text === undefined ? kind : text);
}

function stat(value, label, cls) {
  return el("span", { class: "stat" + (cls ? " " + cls : "") },
    el("span", { class: "v" }, String(value)), el("span", { class: "k" }, label));
}

function ago(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function clock(iso) {
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return dash(iso);
  return t.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// --- sections ---------------------------------------------------------------------------------

function renderSummary(st) {
  const s = st.summary || {};
  const groupsCls = s.groups_without_leader ? "bad" : s.groups_ok < s.groups ? "warn" : "ok";
  replace("summary",
    stat(`${s.groups_ok ?? "?"}/${s.groups ?? "?"}`, "groups healthy", st.probed ? groupsCls : ""),
    stat(s.nodes ?? "?", "nodes"),
    stat(s.nodes_unreachable ?? 0, "unreachable", s.nodes_unreachable ? "bad" : ""),
    stat(s.spares ?? 0, "spares"),
    stat(s.flagged ?? 0, "flagged", s.flagged ? "warn" : ""),
    stat(s.tables ?? "?", "tables"),
    stat(s.ranges ?? "?", "ranges"),
    stat(st.meta ? "#" + st.meta.id : "none", "active meta", st.meta ? "" : "bad"),
  );
  const meta = st.meta ? `active meta ${st.meta.id} at ${st.meta.address}` : "no active meta";
  replace("meta-info", `${meta} · etcd revision ${dash(st.revision)} · probe ${dash(st.probe_ms)} ms`);
}

function memberRow(m, group, confirmed) {
  const down = m.reachable === false;
  const leads = m.leader && confirmed;
  let role;
  if (down) role = badge("unreachable");
  else if (m.learner) role = badge("learner", group.replacing != null
    ? `learner → replaces ${group.replacing}` : "learner");
  else role = badge(m.role || "unknown", m.role || "?");
  const cls = [leads ? "leader" : "", down ? "down" : ""].join(" ").trim();
  return el("tr", { class: cls || null, "data-node": m.id, title: down ? m.error : null },
    el("td", { class: "num" }, leads ? el("span", { class: "star", title: "leader" }, "★ ") : "",
      String(m.id)),
    el("td", { class: "mono" }, dash(m.address)),
    el("td", null, role),
    el("td", { class: "num" }, dash(m.epoch)),
    el("td", { class: "num" }, dash(m.last_index)),
    el("td", { class: "num" }, dash(m.commit_index)),
    el("td", { class: "num" }, dash(m.applied_index)),
    el("td", { class: "num" }, leads ? "—" : dash(m.lag),
      m.stuck ? [" ", el("span", { class: "badge stuck", title: m.stuck.reason || "" },
        "stuck")] : ""),
  );
}

function renderGroups(st) {
  const groups = st.groups || [];
  if (!groups.length) { replace("groups", el("p", { class: "empty" }, "no groups yet")); return; }
  replace("groups", groups.map((g) => {
    // without a probe the recorded leader is all there is; with one, only a node that says
    // it leads is shown as the leader
    const confirmed = g.leader_live || !st.probed;
    const head = el("div", { class: "group-head" },
      el("span", { class: "name" }, `Group ${g.id}`),
      badge(g.health, g.health.replace("_", " ")),
      confirmed
        ? el("span", { class: "meta" }, "leader ",
          el("b", { class: "leader-id" }, g.leader == null ? "none" : "node " + g.leader))
        : el("span", { class: "meta" }, "leader ", el("b", null, "none"),
          g.leader_recorded == null ? "" : ` (recorded: node ${g.leader_recorded})`),
      el("span", { class: "meta" }, "epoch ", el("b", null, dash(g.leader_epoch ?? g.epoch))),
      el("span", { class: "meta" }, "commit ", el("b", null, dash(g.commit_index))),
    );
    const rows = el("tbody", null, (g.members || []).map((m) => memberRow(m, g, confirmed)));
    const table = el("table", null,
      el("thead", null, el("tr", null,
        el("th", { class: "num" }, "node"), el("th", null, "address"), el("th", null, "role"),
        el("th", { class: "num" }, "epoch"), el("th", { class: "num" }, "last"),
        el("th", { class: "num" }, "commit"), el("th", { class: "num" }, "applied"),
        el("th", { class: "num" }, "lag"))),
      rows);
    const notes = [];
    if (g.leader_recorded != null && g.leader_live && g.leader_recorded !== g.leader) {
      notes.push(`the metadata still records node ${g.leader_recorded} as leader`);
    }
    if ((g.joint || []).length) {
      notes.push(`reconfiguration unfinished: a campaign also needs a majority of ${g.joint.join(", ")}`);
    }
    if (g.replacing != null) notes.push(`replacing node ${g.replacing}`);
    for (const m of g.members || []) {
      if (m.stuck) notes.push(`node ${m.id}: lag stopped shrinking since ${m.stuck.since}: ${m.stuck.reason}`);
    }
    const foot = el("div", { class: "group-foot" },
      el("span", null, el("b", null, count(g.ranges)), " ranges"),
      el("span", null, el("b", null, count(g.keys)), " keys"),
      el("span", null, el("b", null, bytes(g.bytes))), 
      el("span", null, el("b", null, rate(g.rps)), " reads/s"),
      el("span", null, el("b", null, rate(g.wps)), " writes/s"),
    );
    return el("article", { class: "group " + g.health, "data-group": g.id,
      "data-leader": confirmed && g.leader != null ? g.leader : "" },
      head, table, notes.map((n) => el("div", { class: "note" }, n)), foot);
  }));
}

function rangeBound(value, isEnd) {
  if (value === null || value === undefined) return isEnd ? "+∞" : "−∞";
  if (value === "") return "−∞";
  return JSON.stringify(value); // quoted, escapes control characters
}

function renderTables(st) {
  const tables = st.tables || [];
  if (!tables.length) { replace("tables", el("p", { class: "empty" }, "no tables")); return; }
  const maxBytes = Math.max(1, ...tables.flatMap((t) => t.ranges.map((r) => r.bytes || 0)));
  replace("tables", tables.map((t) => {
    const shown = t.ranges.length;
    const head = el("div", { class: "table-head" },
      el("span", { class: "name" }, t.name),
      t.state && t.state !== "active" ? badge("degraded", t.state) : null,
      el("span", { class: "meta" }, "id ", el("b", null, dash(t.id))),
      el("span", { class: "meta" }, el("b", null, count(t.ranges_total)), " ranges",
        shown < t.ranges_total ? ` (first ${shown} shown)` : ""),
      el("span", { class: "meta" }, el("b", null, count(t.keys)), " keys"),
      el("span", { class: "meta" }, el("b", null, bytes(t.bytes))),
      el("span", { class: "meta" }, el("b", null, rate(t.rps)), " reads/s · ",
        el("b", null, rate(t.wps)), " writes/s"),
    );
    const rows = t.ranges.map((r) => {
      let state = badge("ok", "active");
      if (r.moving) state = badge("moving", `${r.moving.phase} ${r.moving.from} → ${r.moving.to}`);
      else if (r.state && r.state !== "active") state = badge("moving", r.state);
      return el("tr", { "data-group": r.group, "data-keys": r.keys == null ? "" : r.keys,
        "data-rps": r.rps == null ? "" : r.rps },
        el("td", { class: "key", title: `hex ${r.start_hex || "(empty)"}` }, rangeBound(r.start, false)),
        el("td", { class: "key", title: r.end_hex == null ? "no upper bound" : `hex ${r.end_hex}` },
          rangeBound(r.end, true)),
        el("td", { class: "num" }, dash(r.group)),
        el("td", { class: "num" }, dash(r.leader)),
        el("td", { class: "num" }, count(r.keys)),
        el("td", { class: "num" }, bytes(r.bytes),
          r.bytes ? el("span", { class: "bar", style: null,
            "data-w": Math.max(2, Math.round(60 * r.bytes / maxBytes)) }) : null),
        el("td", { class: "num" }, rate(r.rps)),
        el("td", { class: "num" }, rate(r.wps)),
        el("td", null, state),
      );
    });
    const table = el("table", null,
      el("thead", null, el("tr", null,
        el("th", null, "start"), el("th", null, "end"), el("th", { class: "num" }, "group"),
        el("th", { class: "num" }, "leader"), el("th", { class: "num" }, "keys"),
        el("th", { class: "num" }, "size"), el("th", { class: "num" }, "reads/s"),
        el("th", { class: "num" }, "writes/s"), el("th", null, "state"))),
      el("tbody", null, rows));
    return el("div", { class: "table-block", "data-table": t.name }, head, table);
  }));
  // bar widths through the CSSOM (a style attribute would need 'unsafe-inline' in the CSP)
  for (const bar of document.querySelectorAll("#tables .bar")) {
    bar.style.width = bar.getAttribute("data-w") + "px";
  }
}

function renderNodes(st) {
  const nodes = (st.nodes || []).filter((n) => n.state !== "member");
  if (!nodes.length) {
    replace("nodes", el("p", { class: "empty" }, "none: every node serves in a group"));
    return;
  }
  const order = { flagged: 0, joining: 1, spare: 2 };
  nodes.sort((a, b) => (order[a.state] ?? 3) - (order[b.state] ?? 3) || a.id - b.id);
  replace("nodes", el("table", null,
    el("thead", null, el("tr", null, el("th", { class: "num" }, "node"), el("th", null, "address"),
      el("th", null, "state"), el("th", null, "answers"), el("th", null, "reason"))),
    el("tbody", null, nodes.map((n) => el("tr", { "data-node": n.id, "data-state": n.state },
      el("td", { class: "num" }, String(n.id)),
      el("td", { class: "mono" }, dash(n.address)),
      el("td", null, badge(n.state), n.group != null ? ` group ${n.group}` : ""),
      el("td", null, n.reachable === false ? badge("unreachable", "no")
        : n.reachable ? badge("ok", "yes" + (n.role ? ", " + n.role : "")) : "–"),
      el("td", { class: "reason" }, n.reason || (n.reachable === false ? n.error : "") || ""),
    )))));
}

function renderDecisions(st) {
  const decisions = (st.decisions || []).slice(-DECISIONS_SHOWN).reverse();
  if (!decisions.length) {
    replace("decisions", el("p", { class: "empty" }, "no decisions yet"));
    return;
  }
  replace("decisions", el("table", null,
    el("thead", null, el("tr", null, el("th", null, "when"), el("th", null, "decision"),
      el("th", { class: "num" }, "group"), el("th", null, "reason"))),
    el("tbody", null, decisions.map((d) => el("tr", { class: "decision" },
      el("td", { class: "when", title: ago(d.at) }, clock(d.at)),
      el("td", null, badge("follower", d.kind)),
      el("td", { class: "num" }, dash(d.group)),
      el("td", { class: "reason" }, d.reason || ""),
    )))));
}

// --- polling ----------------------------------------------------------------------------------

function showError(message) {
  const banner = document.getElementById("banner");
  const since = lastGood ? ` Showing what was seen at ${lastGood.toLocaleTimeString()}.` : "";
  banner.textContent = `Cannot refresh: ${message}.${since} Retrying every ${POLL_INTERVAL_MS / 1000} s.`;
  banner.hidden = false;
  document.getElementById("live-dot").className = "dot stale";
}

async function poll() {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), POLL_TIMEOUT_MS);
  try {
    const resp = await fetch(STATUS_URL, { cache: "no-store", signal: controller.signal });
    if (!resp.ok) {
      let detail = `HTTP ${resp.status}`;
      try { detail += ": " + (await resp.json()).error.message; } catch (_) { /* not JSON */ }
      throw new Error(detail);
    }
    const st = await resp.json();
    renderSummary(st);
    renderGroups(st);
    renderTables(st);
    renderNodes(st);
    renderDecisions(st);
    lastGood = new Date();
    document.getElementById("banner").hidden = true;
    document.getElementById("live-dot").className = "dot live";
    document.getElementById("refreshed").textContent =
      "refreshed " + lastGood.toLocaleTimeString() + (st.probed ? "" : " (not probed)");
    document.body.setAttribute("data-revision", String(st.revision));
  } catch (err) {
    showError(err.name === "AbortError" ? `no answer within ${POLL_TIMEOUT_MS / 1000} s` : String(err.message || err));
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_INTERVAL_MS);
  }
}

poll();
