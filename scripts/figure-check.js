// Checks the figures of a seli report as a browser renders them (run inside the page by
// crates/seli-cli/tests/browser.rs through headless Chromium). For each inline SVG:
//  - every text lies inside the figure (nothing clipped);
//  - no two texts overlap (tick labels, legend labels, titles, marker labels);
//  - the legend box (the rect drawn with the legend's opacity) holds its labels as rendered,
//    and no curve, band or bar drawn before it enters it.
// The findings are written as JSON into <pre id="seli-check"> for the test to read.
(function () {
  const LEGEND_OPACITY = "0.93";
  const palette = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
  const problems = [];
  let figures = 0, legends = 0, texts = 0;
  const inside = (p, r) => p.x > r.x + 0.5 && p.x < r.x + r.width - 0.5 && p.y > r.y + 0.5 && p.y < r.y + r.height - 0.5;
  const overlap = (a, b, slack) =>
    a.x + slack < b.x + b.width && b.x + slack < a.x + a.width && a.y + slack < b.y + b.height && b.y + slack < a.y + a.height;
  const isData = (e) => {
    const c = (e.getAttribute("stroke") && e.getAttribute("stroke") !== "none") ? e.getAttribute("stroke") : e.getAttribute("fill");
    return c && palette.slice(0, 7).includes(c.toUpperCase());
  };
  const points = (e) => (e.getAttribute("points") || "").trim().split(/\s+/).filter(Boolean).map((p) => {
    const [x, y] = p.split(",").map(Number);
    return { x, y };
  });
  const segmentEnters = (a, b, r) => {
    const n = Math.max(1, Math.ceil(4 * Math.max(Math.abs(b.x - a.x), Math.abs(b.y - a.y))));
    for (let s = 0; s <= n; s++) {
      const t = s / n;
      if (inside({ x: a.x + t * (b.x - a.x), y: a.y + t * (b.y - a.y) }, r)) return true;
    }
    return false;
  };
  document.querySelectorAll("figure").forEach((fig) => {
    const svg = fig.querySelector("svg");
    if (!svg) return;
    figures++;
    const name = fig.id;
    const vb = svg.viewBox.baseVal;
    const all = Array.from(svg.querySelectorAll("*"));
    // Boxes as rendered (rotation included), in the figure's own units.
    const frame = svg.getBoundingClientRect();
    const scale = vb.width / frame.width;
    const rendered = (e) => {
      const c = e.getBoundingClientRect();
      return { x: vb.x + (c.left - frame.left) * scale, y: vb.y + (c.top - frame.top) * scale, width: c.width * scale, height: c.height * scale };
    };
    const boxes = Array.from(svg.querySelectorAll("text")).filter((t) => t.textContent.trim() !== "").map((t) => ({ t, b: rendered(t) }));
    texts += boxes.length;
    for (const { t, b } of boxes) {
      if (b.x < vb.x - 1 || b.y < vb.y - 1 || b.x + b.width > vb.x + vb.width + 1 || b.y + b.height > vb.y + vb.height + 1) {
        problems.push(`${name}: text '${t.textContent.trim()}' is cut off at the figure's edge`);
      }
    }
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        if (overlap(boxes[i].b, boxes[j].b, 1)) {
          problems.push(`${name}: texts '${boxes[i].t.textContent.trim()}' and '${boxes[j].t.textContent.trim()}' overlap`);
        }
      }
    }
    const at = all.findIndex((e) => e.tagName === "rect" && e.getAttribute("opacity") === LEGEND_OPACITY);
    if (at < 0) return;
    legends++;
    const box = all[at];
    const r = { x: +box.getAttribute("x"), y: +box.getAttribute("y"), width: +box.getAttribute("width"), height: +box.getAttribute("height") };
    for (const e of all.slice(at + 1).filter((e) => e.tagName === "text")) {
      const b = rendered(e);
      if (b.x < r.x || b.y < r.y || b.x + b.width > r.x + r.width || b.y + b.height > r.y + r.height) {
        problems.push(`${name}: legend label '${e.textContent.trim()}' sticks out of the legend box`);
      }
    }
    for (const e of all.slice(0, at).filter(isData)) {
      let hit = false;
      if (e.tagName === "polyline" || e.tagName === "polygon") {
        const p = points(e);
        if (e.tagName === "polygon") p.push(p[0]);
        for (let i = 1; i < p.length && !hit; i++) hit = segmentEnters(p[i - 1], p[i], r);
      } else if (e.tagName === "rect") {
        hit = overlap(e.getBBox(), r, 0.5);
      } else if (e.tagName === "circle") {
        hit = inside({ x: +e.getAttribute("cx"), y: +e.getAttribute("cy") }, r);
      }
      if (hit) problems.push(`${name}: the legend covers a ${e.tagName}`);
    }
  });
  const out = document.createElement("pre");
  out.id = "seli-check";
  out.textContent = JSON.stringify({ figures, legends, texts, problems });
  document.body.appendChild(out);
})();
