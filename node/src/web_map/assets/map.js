// The live map of `starmesh local`: plain JS and SVG, no framework, nothing
// fetched from anywhere but this binary. Static geometry comes once from
// /api/system; everything that moves arrives as Server-Sent Events on
// /events: one snapshot, then deltas (moved/new entities, removed ids,
// changed assignments, player counts, events).
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const VIEW = 1000; // the SVG's user space is VIEW x VIEW
  const C = VIEW / 2; // the star
  const S = 470; // display radius of the whole system
  const PALETTE = ["#4e9cff", "#ff7a59", "#3ecf8e", "#f5c542", "#c77dff", "#ff5fa2",
    "#2ed3d3", "#a3d94b", "#ff9f1c", "#8d99ff", "#e76f51", "#90be6d"];
  const UNOWNED = "#5b6275";
  const ENTITY_R = 3; // an entity's dot, in user units at zoom 1

  const $ = (id) => document.getElementById(id);
  const el = (name, attrs, parent) => {
    const e = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  };
  const html = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  };
  // Epochs are `generation << 32 | counter` (the generation grows with every
  // replicant restart); shown as generation·counter to stay readable.
  const fmtEpoch = (e) => e === undefined || e === null ? "—"
    : e >= 2 ** 32 ? `${Math.floor(e / 2 ** 32)}·${e % 2 ** 32}` : String(e);
  const fmtKm = (km) => km >= 1e6 ? (km / 1e6).toFixed(2) + " Mkm"
    : km >= 1e3 ? (km / 1e3).toFixed(1) + " thousand km" : Math.round(km) + " km";

  // ---- state ---------------------------------------------------------------
  const state = {
    system: null,
    seq: -1,
    tick: 0,
    entities: new Map(), // id -> {kind, x, y, z, territory, el}
    assignments: {}, // territory -> {server, epoch}
    live: [],
    players: {},
    evicted: 0,
    totals: { handoffs: 0, takeovers: 0 },
    events: [],
    // A dynamic layout's cells: splits of its territories by planes (cell -> {axis, at}).
    cells: { version: 0, splits: [] },
    decisions: [], // the local autoscaler's, newest last
    selected: null, // {type, name}
    canKill: false, // until /api/control says otherwise
    snapshots: 0,
    deltas: 0,
  };
  const colours = new Map();
  function colourOf(server) {
    if (!server) return UNOWNED;
    if (!colours.has(server)) colours.set(server, PALETTE[colours.size % PALETTE.length]);
    return colours.get(server);
  }

  // ---- geometry: log scale around the star, and again inside each location ----
  // Real distances run from ~100 km (a landing zone's sphere) to ~50 million km
  // (a jump gate): linear would make everything but the outer planets
  // invisible. Around the star, the distance r from `rmin` (half the distance
  // to the nearest top-level location's edge) out to the farthest thing is
  // drawn on a log scale; inside `rmin`, where there is nothing but the star,
  // linearly. Inside a location, the offset from its centre is log-scaled into
  // the location's circle again, so moons, stations and landing zones get room.
  // Directions are kept (an oblique projection folds z into the plane so
  // surface landing zones do not all sit on their planet's centre).
  const STAR_PX = 14;
  const layout = { byName: new Map(), spheres: [], rmax: 1, rmin: 1 };
  const dir = (dx, dy, dz) => {
    const px = dx + 0.45 * dz, py = dy + 0.6 * dz;
    const n = Math.hypot(px, py);
    return n > 0 ? [px / n, -py / n] : [1, 0]; // SVG y grows downwards
  };
  const fTop = (r) => r <= layout.rmin ? STAR_PX * r / layout.rmin
    : STAR_PX + (S - STAR_PX) * Math.log(r / layout.rmin) / Math.log(layout.rmax / layout.rmin);
  const inner = (loc, d) => loc.dr * Math.log(1 + d / loc.k) / Math.log(1 + loc.radius / loc.k);

  function placeTop(x, y, z) {
    const d = Math.hypot(x, y, z);
    const [ux, uy] = dir(x, y, z);
    const rd = fTop(d);
    return [C + ux * rd, C + uy * rd];
  }
  function placeIn(loc, x, y, z) {
    const dx = x - loc.x, dy = y - loc.y, dz = z - loc.z;
    const d = Math.hypot(dx, dy, dz);
    const [ux, uy] = dir(dx, dy, dz);
    const rd = inner(loc, d);
    return [loc.dx + ux * rd, loc.dy + uy * rd];
  }
  // Innermost location sphere containing a point (what the replicant's territory map does too).
  function innermost(x, y, z) {
    for (const l of layout.spheres) {
      const dx = x - l.x, dy = y - l.y, dz = z - l.z;
      if (dx * dx + dy * dy + dz * dz <= l.radius * l.radius) return l;
    }
    return null;
  }
  // The leaf cell of territory `base` containing a point (partition::cell_of).
  const AXES = { x: 0, y: 1, z: 2 };
  function cellOf(base, x, y, z) {
    const planes = new Map(state.cells.splits.map((s) => [s.cell, s]));
    let cell = base;
    for (let i = 0; i <= 6; i++) {
      const p = planes.get(cell);
      if (!p) break;
      cell += [x, y, z][AXES[p.axis]] >= p.at ? "/1" : "/0";
    }
    return cell;
  }
  // Players of a territory, all its cells together.
  function playersIn(t) {
    let n = 0;
    for (const [c, k] of Object.entries(state.players)) if (c === t || c.startsWith(t + "/")) n += k;
    return n;
  }
  function place(x, y, z) {
    const l = innermost(x, y, z);
    return l ? placeIn(l, x, y, z) : placeTop(x, y, z);
  }

  function computeLayout(sys) {
    const star = Math.max(sys.star.radius, 1);
    let rmax = star * 10, nearest = Infinity;
    for (const l of sys.locations) {
      if (l.parent) continue;
      const d = Math.hypot(l.x, l.y, l.z);
      rmax = Math.max(rmax, d + l.radius);
      nearest = Math.min(nearest, d - l.radius);
    }
    for (const g of sys.gates) {
      const d = Math.hypot(g.x, g.y, g.z);
      rmax = Math.max(rmax, d);
      nearest = Math.min(nearest, d);
    }
    layout.rmax = rmax * 1.02;
    layout.rmin = Math.min(Math.max(star, isFinite(nearest) ? nearest / 2 : star), layout.rmax / 10);
    for (const l of sys.locations) layout.byName.set(l.name, Object.assign({}, l));
    const done = new Set();
    const visit = (l, guard) => {
      if (done.has(l.name)) return;
      if (guard > 64) throw new Error("location parent chain too deep: " + l.name);
      const p = l.parent ? layout.byName.get(l.parent) : null;
      if (p) {
        visit(p, guard + 1);
        const [x, y] = placeIn(p, l.x, l.y, l.z);
        const d = Math.hypot(l.x - p.x, l.y - p.y, l.z - p.z);
        const span = (inner(p, d + l.radius) - inner(p, Math.max(d - l.radius, 0))) / 2;
        l.dx = x; l.dy = y;
        l.dr = Math.max(Math.min(span, p.dr * 0.3), Math.min(1.2, p.dr * 0.2));
      } else {
        const [x, y] = placeTop(l.x, l.y, l.z);
        const d = Math.hypot(l.x, l.y, l.z);
        const span = (fTop(d + l.radius) - fTop(Math.max(d - l.radius, 0))) / 2;
        l.dx = x; l.dy = y;
        l.dr = Math.max(span, 3);
      }
      // Inside a location, the log starts a thousandth of its radius out.
      l.k = l.radius / 1000;
      l.depth = p ? p.depth + 1 : 0;
      done.add(l.name);
    };
    for (const l of layout.byName.values()) visit(l, 0);
    layout.spheres = [...layout.byName.values()].sort((a, b) => a.radius - b.radius);
  }

  // ---- drawing ----------------------------------------------------------------
  const layers = {};
  const locEls = new Map(); // name -> circle
  const labelEls = new Map(); // location name -> its label
  const labels = []; // {el, size, small}
  let zoom = 1;

  function drawStatic(sys) {
    for (const n of ["space", "orbits", "locations", "gates", "entities", "labels"]) layers[n] = $("layer-" + n);
    $("system-name").textContent = sys.displayName;
    document.title = sys.displayName + " — starmesh local";
    el("circle", { cx: C, cy: C, r: S, id: "deep-space", "data-territory": "deep-space", class: "location",
      "data-location": "deep-space", "fill-opacity": 0.07 }, layers.space)
      .addEventListener("click", () => select({ type: "territory", name: "deep-space" }));
    const star = el("circle", { cx: C, cy: C, r: Math.max(fTop(sys.star.radius), 5), fill: "#ffcc55",
      class: "location", "data-location": sys.star.name }, layers.locations);
    star.addEventListener("click", () => select({ type: "star", name: sys.star.name }));
    label(sys.star.name, C, C - 10, false);
    // Deepest last, so moons and stations sit on top of their planets.
    const ordered = [...layout.byName.values()].sort((a, b) => a.depth - b.depth || b.radius - a.radius);
    for (const l of ordered) {
      if (l.parent) {
        const p = layout.byName.get(l.parent);
        el("circle", { cx: p.dx, cy: p.dy, r: Math.hypot(l.dx - p.dx, l.dy - p.dy), class: "orbit" }, layers.orbits);
      } else {
        el("circle", { cx: C, cy: C, r: Math.hypot(l.dx - C, l.dy - C), class: "orbit" }, layers.orbits);
      }
      const c = el("circle", { cx: l.dx, cy: l.dy, r: l.dr, class: "location " + l.kind,
        "data-location": l.name, "data-territory": l.territory }, layers.locations);
      c.addEventListener("click", (ev) => { ev.stopPropagation(); select({ type: "location", name: l.name }); });
      c.addEventListener("dblclick", (ev) => { ev.stopPropagation(); zoomTo(l.name); });
      locEls.set(l.name, c);
      labelEls.set(l.name, label(l.name, l.dx, l.dy - l.dr - 2, l.depth > 0));
    }
    for (const g of sys.gates) {
      const [x, y] = placeTop(g.x, g.y, g.z);
      const d = `M ${x} ${y - 7} L ${x + 6} ${y} L ${x} ${y + 7} L ${x - 6} ${y} Z`;
      el("path", { d, class: "gate", "data-gate": g.name }, layers.gates)
        .addEventListener("click", (ev) => { ev.stopPropagation(); select({ type: "gate", name: g.name }); });
      label(g.name + " → " + g.target, x, y - 10, false);
    }
    applyZoom();
  }

  function label(text, x, y, small) {
    const t = el("text", { x, y, "text-anchor": "middle", class: small ? "small" : "" }, layers.labels);
    t.textContent = text;
    labels.push({ el: t, small });
    return t;
  }

  // A territory's player count next to the location that names it.
  function labelCounts() {
    for (const [name, t] of labelEls) {
      const n = name === layout.byName.get(name).territory ? playersIn(name) : 0;
      t.textContent = n > 0 ? `${name} · ${n} player${n === 1 ? "" : "s"}` : name;
    }
  }

  function recolour() {
    for (const [name, c] of locEls) {
      const l = layout.byName.get(name);
      // A split territory: the cell its centre lies in.
      const a = state.assignments[cellOf(l.territory, l.x, l.y, l.z)] || {};
      const col = colourOf(a.server);
      c.setAttribute("fill", col);
      c.setAttribute("fill-opacity", l.depth === 0 ? 0.55 : 0.8);
      c.setAttribute("stroke", col);
      c.setAttribute("data-owner", a.server || "");
    }
    const ds = $("deep-space");
    const a = state.assignments[cellOf("deep-space", 0, 0, 0)] || {};
    ds.setAttribute("fill", colourOf(a.server));
    ds.setAttribute("data-owner", a.server || "");
  }

  // Updates arrive ten times a second; in between, dots glide from where
  // they were drawn to where they are (one animation frame loop for all).
  const GLIDE_MS = 100;
  const gliding = new Set();
  let glideFrame = 0;
  function glide(now) {
    glideFrame = 0;
    for (const e of gliding) {
      const f = Math.min((now - e.t0) / GLIDE_MS, 1);
      e.el.setAttribute("cx", (e.fx + (e.sx - e.fx) * f).toFixed(2));
      e.el.setAttribute("cy", (e.fy + (e.sy - e.fy) * f).toFixed(2));
      if (f >= 1) gliding.delete(e);
    }
    if (gliding.size) glideFrame = requestAnimationFrame(glide);
  }

  function drawEntity(id, e) {
    const [x, y] = place(e.x, e.y, e.z);
    const first = !e.el;
    if (first) {
      e.el = el("circle", { class: "entity", "data-entity": id, r: ENTITY_R / zoom }, layers.entities);
    }
    if (first || document.hidden) {
      e.el.setAttribute("cx", x.toFixed(2));
      e.el.setAttribute("cy", y.toFixed(2));
    } else if (x !== e.sx || y !== e.sy) {
      e.fx = +e.el.getAttribute("cx"); e.fy = +e.el.getAttribute("cy"); e.t0 = performance.now();
      gliding.add(e);
      if (!glideFrame) glideFrame = requestAnimationFrame(glide);
    }
    e.sx = x; e.sy = y;
    const owner = (state.assignments[e.territory] || {}).server;
    e.el.setAttribute("fill", owner ? colourOf(owner) : "#ffffff");
  }

  // ---- zoom and pan (the SVG viewBox) ----------------------------------------------
  const vb = { x: 0, y: 0, w: VIEW };
  function applyZoom() {
    zoom = VIEW / vb.w;
    $("map").setAttribute("viewBox", `${vb.x} ${vb.y} ${vb.w} ${vb.w}`);
    // Text and dots keep their on-screen size; small labels appear once zoomed in.
    // Inline styles: they win over the stylesheet's sizes, which are for zoom 1.
    for (const l of labels) {
      l.el.style.fontSize = (l.small ? 10 : 13) / zoom + "px";
      l.el.style.strokeWidth = 3 / zoom + "px";
      l.el.style.display = l.small && zoom < 4 ? "none" : "";
    }
    for (const e of state.entities.values()) if (e.el) e.el.setAttribute("r", ENTITY_R / zoom);
  }
  // Frames a location (its moons, stations and landing zones become legible).
  function zoomTo(name) {
    const l = layout.byName.get(name);
    if (!l) return false;
    const w = Math.max(l.dr * 3, 2);
    vb.x = l.dx - w / 2; vb.y = l.dy - w / 2; vb.w = w;
    applyZoom();
    return true;
  }
  function setupZoom() {
    const svg = $("map");
    const toUser = (ev) => {
      const r = svg.getBoundingClientRect();
      const s = Math.min(r.width, r.height);
      const ox = (r.width - s) / 2, oy = (r.height - s) / 2;
      return [vb.x + (ev.clientX - r.left - ox) / s * vb.w, vb.y + (ev.clientY - r.top - oy) / s * vb.w];
    };
    svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const [ux, uy] = toUser(ev);
      const f = Math.exp(Math.sign(ev.deltaY) * 0.18);
      const w = Math.min(Math.max(vb.w * f, 0.5), VIEW * 2);
      vb.x = ux - (ux - vb.x) * (w / vb.w);
      vb.y = uy - (uy - vb.y) * (w / vb.w);
      vb.w = w;
      applyZoom();
    }, { passive: false });
    let drag = null;
    svg.addEventListener("pointerdown", (ev) => { drag = { x: ev.clientX, y: ev.clientY, vx: vb.x, vy: vb.y }; });
    svg.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      const r = svg.getBoundingClientRect();
      const s = Math.min(r.width, r.height);
      if (Math.hypot(ev.clientX - drag.x, ev.clientY - drag.y) > 3) svg.classList.add("dragging");
      vb.x = drag.vx - (ev.clientX - drag.x) / s * vb.w;
      vb.y = drag.vy - (ev.clientY - drag.y) / s * vb.w;
      applyZoom();
    });
    const end = () => { drag = null; svg.classList.remove("dragging"); };
    svg.addEventListener("pointerup", end);
    svg.addEventListener("pointerleave", end);
    svg.addEventListener("dblclick", () => { vb.x = 0; vb.y = 0; vb.w = VIEW; applyZoom(); });
  }

  // ---- side panels -------------------------------------------------------------
  function entitiesBy(pred) {
    let n = 0;
    for (const e of state.entities.values()) if (pred(e)) n++;
    return n;
  }
  function territoryOwner(t) { return (state.assignments[t] || {}).server || null; }

  function renderPanels() {
    const total = state.entities.size;
    const players = Object.values(state.players).reduce((a, b) => a + b, 0);
    const totals = $("totals");
    totals.replaceChildren();
    for (const [k, v] of [["tick", state.tick], ["entities", total], ["evicted", state.evicted],
      ["players", players], ["handoffs", state.totals.handoffs], ["takeovers", state.totals.takeovers]]) {
      totals.append(k + " ", html("b", String(v)), "   ");
    }
    // Servers: the layout's, then any other that connected.
    const names = new Set([...(state.system.servers || []), ...state.live]);
    for (const t of Object.values(state.assignments)) if (t.server) names.add(t.server);
    const ul = $("servers");
    ul.replaceChildren();
    for (const s of names) {
      const owned = Object.entries(state.assignments).filter(([, a]) => a.server === s).map(([t]) => t);
      const li = html("li", undefined, "clickable" + (state.live.includes(s) ? "" : " dead"));
      const sw = html("span", undefined, "swatch");
      sw.style.background = colourOf(s);
      li.append(sw, `${s} — ${owned.length} territor${owned.length === 1 ? "y" : "ies"}`);
      li.dataset.server = s;
      li.addEventListener("click", () => select({ type: "server", name: s }));
      ul.append(li);
    }
    const counts = {};
    for (const e of state.entities.values()) counts[e.territory] = (counts[e.territory] || 0) + 1;
    const tb = $("territories").tBodies[0];
    tb.replaceChildren();
    // Split territories are listed as their cells (what is owned).
    const split = state.cells.splits.length > 0;
    $("territories-title").textContent = split
      ? `Cells (partition v${state.cells.version}: ${Object.keys(state.assignments).length} cells)` : "Territories";
    const rows = split ? Object.keys(state.assignments).sort() : state.system.territories;
    for (const t of rows) {
      const a = state.assignments[t] || {};
      const tr = html("tr", undefined, "clickable");
      tr.dataset.territory = t;
      const owner = html("td");
      const sw = html("span", undefined, "swatch");
      sw.style.background = colourOf(a.server);
      owner.append(sw, a.server || "unowned");
      tr.append(html("td", t), owner, html("td", fmtEpoch(a.epoch), "num"),
        html("td", String(state.players[t] || 0), "num"), html("td", String(counts[t] || 0), "num"));
      tr.addEventListener("click", () => select({ type: "territory", name: t }));
      tb.append(tr);
    }
    labelCounts();
    $("autoscaler").hidden = state.decisions.length === 0;
    const decList = $("decisions");
    decList.replaceChildren();
    for (const d of state.decisions.slice().reverse()) {
      const li = html("li", undefined, "decision " + d.action);
      li.append(html("span", d.action, "tick"), d.message);
      decList.append(li);
    }
    const ol = $("events");
    ol.replaceChildren();
    for (const ev of state.events.slice(-40).reverse()) {
      const li = html("li", undefined, ev.kind);
      li.append(html("span", "#" + ev.tick, "tick"), ev.text);
      ol.append(li);
    }
    renderDetails();
  }

  function dl(rows) {
    const d = html("dl");
    for (const [k, v] of rows) d.append(html("dt", k), html("dd", String(v)));
    return d;
  }

  function select(sel) {
    state.selected = sel;
    for (const c of locEls.values()) c.classList.remove("selected");
    if (sel.type === "location" && locEls.has(sel.name)) locEls.get(sel.name).classList.add("selected");
    renderDetails();
  }

  function renderDetails() {
    const box = $("details");
    const sel = state.selected;
    if (!sel) return;
    const body = [html("h2", "Details")];
    if (sel.type === "location") {
      const l = layout.byName.get(sel.name);
      // In a split territory: the cell its centre lies in.
      const cell = cellOf(l.territory, l.x, l.y, l.z);
      const owner = territoryOwner(cell);
      const inside = entitiesBy((e) => innermost(e.x, e.y, e.z) === l);
      body.push(html("h3", l.name), dl([
        ["kind", l.kind], ["parent", l.parent || state.system.star.name],
        ["territory", cell === l.territory ? l.territory : `${l.territory} (centre in cell ${cell})`],
        ["owner", owner || "unowned"], ["epoch", fmtEpoch((state.assignments[cell] || {}).epoch)],
        ["radius", fmtKm(l.radius)], ["from the star", fmtKm(Math.hypot(l.x, l.y, l.z))],
        ["entities inside", inside], ["players in territory", playersIn(l.territory)],
      ]));
    } else if (sel.type === "server") {
      const owned = Object.entries(state.assignments).filter(([, a]) => a.server === sel.name).map(([t]) => t);
      const ents = entitiesBy((e) => owned.includes(e.territory));
      const players = owned.reduce((n, t) => n + (state.players[t] || 0), 0);
      body.push(html("h3", sel.name), dl([
        ["state", state.live.includes(sel.name) ? "live" : "gone"], ["territories", owned.join(", ") || "none"],
        ["entities simulated", ents], ["players", players],
      ]));
      if (state.live.includes(sel.name) && state.canKill) {
        const b = html("button", "Kill this server (simulate a crash)");
        b.addEventListener("click", async () => {
          b.disabled = true;
          const r = await fetch(`/api/servers/${encodeURIComponent(sel.name)}/kill`, { method: "POST" });
          b.textContent = r.ok ? "killed — watch its territories change colour" : "could not kill: " + r.status;
        });
        body.push(b);
      }
    } else if (sel.type === "territory") {
      const a = state.assignments[sel.name] || {};
      body.push(html("h3", sel.name), dl([
        ["owner", a.server || "unowned"], ["epoch", fmtEpoch(a.epoch)],
        ["locations", [...layout.byName.values()].filter((l) => l.territory === sel.name).map((l) => l.name).join(", ") || "the rest of the system"],
        ["entities", entitiesBy((e) => e.territory === sel.name)], ["players", state.players[sel.name] || 0],
      ]));
    } else if (sel.type === "gate") {
      const g = state.system.gates.find((g) => g.name === sel.name);
      body.push(html("h3", g.name), dl([["leads to", g.target], ["from the star", fmtKm(Math.hypot(g.x, g.y, g.z))]]));
    } else if (sel.type === "star") {
      body.push(html("h3", sel.name), dl([["kind", "star"], ["radius", fmtKm(state.system.star.radius)]]));
    }
    box.replaceChildren(...body);
  }

  // ---- the stream ---------------------------------------------------------------
  function setRow(r) {
    const [id, kind, x, y, z, territory] = r;
    let e = state.entities.get(id);
    if (!e) { e = { kind }; state.entities.set(id, e); }
    Object.assign(e, { kind, x, y, z, territory });
    return [id, e];
  }

  function applySnapshot(s) {
    for (const e of state.entities.values()) if (e.el) e.el.remove();
    state.entities.clear();
    gliding.clear();
    state.seq = s.seq; state.tick = s.tick;
    state.assignments = s.assignments; state.live = s.live; state.players = s.players;
    state.evicted = s.evicted; state.events = s.events; state.totals = s.totals;
    state.cells = s.cells || { version: 0, splits: [] }; state.decisions = s.decisions || [];
    recolour();
    for (const r of s.entities) { const [id, e] = setRow(r); drawEntity(id, e); }
    state.snapshots++;
    renderPanels();
  }

  function applyDelta(d) {
    if (d.seq <= state.seq) return; // already in the snapshot
    state.seq = d.seq; state.tick = d.tick; state.evicted = d.evicted; state.totals = d.totals;
    // With a partition change the assignments come whole (cells went away).
    if (d.cells) { state.cells = d.cells; state.assignments = d.assignments || {}; recolour(); }
    else if (d.assignments) { Object.assign(state.assignments, d.assignments); recolour(); }
    if (d.decisions) state.decisions = d.decisions;
    if (d.live) state.live = d.live;
    if (d.players) state.players = d.players;
    for (const id of d.gone) {
      const e = state.entities.get(id);
      if (e && e.el) e.el.remove();
      if (e) gliding.delete(e);
      state.entities.delete(id);
    }
    const recolourAll = !!d.assignments;
    for (const r of d.moved) { const [id, e] = setRow(r); drawEntity(id, e); }
    if (recolourAll) for (const [id, e] of state.entities) drawEntity(id, e);
    if (d.events.length) state.events = state.events.concat(d.events).slice(-50);
    state.deltas++;
    renderPanels();
  }

  function connect() {
    const status = $("status");
    const es = new EventSource("/events");
    es.addEventListener("open", () => { status.textContent = "live"; status.className = "status live"; });
    es.addEventListener("snapshot", (m) => applySnapshot(JSON.parse(m.data)));
    es.addEventListener("delta", (m) => applyDelta(JSON.parse(m.data)));
    // EventSource reconnects by itself; a new connection starts with a snapshot.
    es.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "status down"; });
  }

  // Controls are offered only when the binary says so (the map is served on
  // loopback); otherwise a banner says the map is read-only, so nobody wonders
  // where the kill button went.
  async function control() {
    const r = await fetch("/api/control");
    if (!r.ok) throw new Error("GET /api/control: " + r.status);
    state.canKill = (await r.json()).kill === true;
    $("readonly-banner").hidden = state.canKill;
    document.body.classList.toggle("read-only", !state.canKill);
  }

  async function start() {
    await control();
    const r = await fetch("/api/system");
    if (!r.ok) throw new Error("GET /api/system: " + r.status);
    const sys = await r.json();
    state.system = sys;
    for (const s of sys.servers) colourOf(s); // the layout's order fixes the colours
    computeLayout(sys);
    drawStatic(sys);
    setupZoom();
    connect();
  }

  // For tools and the browser test: read-only views of what is drawn.
  window.starmesh = {
    state,
    layout,
    ready: () => state.system !== null && state.snapshots > 0,
    readOnly: () => !state.canKill,
    entityPositions: () => Object.fromEntries([...state.entities].map(([id, e]) => [id, [e.sx, e.sy]])),
    locationsDrawn: () => [...locEls.keys()],
    ownerColour: (location) => (locEls.get(location) || {}).getAttribute?.("fill") || null,
    cellOf,
    cells: () => state.cells,
    cellsListed: () => [...$("territories").tBodies[0].rows].map((r) => r.dataset.territory),
    decisionsShown: () => [...$("decisions").children].map((li) => li.textContent),
    select,
    zoomTo,
  };
  start().catch((e) => {
    const s = $("status");
    s.textContent = "failed: " + e.message;
    s.className = "status down";
    throw e;
  });
})();
