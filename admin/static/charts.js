// Small SVG charts for the dashboard: a line/area chart over time and a horizontal bar chart.
// Everything is built with DOM calls (never innerHTML) and styled by CSS classes, so the page
// runs under `Content-Security-Policy: default-src 'self'`.

const SVG_NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function svg(width, height, label) {
  return el("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": label,
    preserveAspectRatio: "xMidYMid meet",
  });
}

function empty(container, message) {
  container.replaceChildren();
  const p = document.createElement("p");
  p.className = "note";
  p.textContent = message;
  container.append(p);
}

// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/**
 * Draw series over shared x labels.
 * data = {labels: [string], series: [{name, values: [number], cls}]}; format(number) → string.
 */
export function lineChart(container, data, format = String) {
  const { labels, series } = data;
  if (labels.length === 0) {
    empty(container, "No data in this window.");
    return;
  }
  const W = 960, H = 280, left = 72, right = 24, top = 32, bottom = 32;
  const plotW = W - left - right, plotH = H - top - bottom;
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values)));
  const x = (i) => left + (labels.length === 1 ? plotW / 2 : (i * plotW) / (labels.length - 1));
  const y = (v) => top + plotH - (v / max) * plotH;
  const root = svg(W, H, series.map((s) => s.name).join(" and ") + " over time");

  for (let t = 0; t <= 4; t += 1) {
    const v = (max * t) / 4;
    root.append(el("line", { class: "gridline", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
    root.append(el("text", { class: "tick", x: left - 6, y: y(v) + 4, "text-anchor": "end" },
      format(v)));
  }
  const every = Math.max(1, Math.ceil(labels.length / 6));
  labels.forEach((label, i) => {
    if (i % every !== 0 && i !== labels.length - 1) return;
    const edge = labels.length > 1 && (i === 0 ? "start" : i === labels.length - 1 && "end");
    const anchor = edge || "middle";
    root.append(el("text", { class: "tick", x: x(i), y: H - bottom + 18, "text-anchor": anchor },
      label));
  });

  series.forEach((s) => {
    const group = el("g", { class: `series ${s.cls}`, "data-series": s.name });
    const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`);
    const base = y(0).toFixed(1);
    const last = x(s.values.length - 1).toFixed(1);
    group.append(el("path", {
      class: "area", d: `M${x(0).toFixed(1)},${base} L${points.join(" L")} L${last},${base} Z`,
    }));
    group.append(el("polyline", { class: "line", points: points.join(" ") }));
    s.values.forEach((v, i) => {
      const dot = el("circle", { class: "point", cx: x(i), cy: y(v), r: 3 });
      dot.append(el("title", {}, `${labels[i]}: ${s.name} ${format(v)}`));
      group.append(dot);
    });
    root.append(group);
  });

  const legend = el("g", { class: "legend" });
  series.forEach((s, i) => {
    const lx = left + i * 100;
    legend.append(el("rect", { class: `swatch ${s.cls}`, x: lx, y: 8, width: 10, height: 10 }));
    legend.append(el("text", { x: lx + 14, y: 17 }, s.name));
  });
  root.append(legend);
  container.replaceChildren(root);
}

/**
 * Draw one horizontal bar per item. items = [{label, value}] with value in [0, 1];
 * format(number) → string for the value printed after each bar.
 */
export function barChart(container, items, format = String) {
  if (items.length === 0) {
    empty(container, "No data in this window.");
    return;
  }
  const W = 480, row = 26, labelW = 190, valueW = 56, top = 6;
  const H = top * 2 + row * items.length;
  const plotW = W - labelW - valueW;
  const root = svg(W, H, "hit rate bars");
  items.forEach((item, i) => {
    const value = Math.min(1, Math.max(0, item.value));
    const y = top + i * row;
    const bar = el("g", { class: "bar-row", "data-label": item.label });
    bar.append(el("text", { class: "label", x: labelW - 8, y: y + 17, "text-anchor": "end" },
      item.label));
    bar.append(el("rect", { class: "track", x: labelW, y: y + 4, width: plotW, height: row - 8 }));
    const rect = el("rect", {
      class: "bar", x: labelW, y: y + 4, width: (value * plotW).toFixed(1), height: row - 8,
    });
    rect.append(el("title", {}, `${item.label}: ${format(value)}`));
    bar.append(rect);
    bar.append(el("text", { class: "value", x: labelW + plotW + 6, y: y + 17 }, format(value)));
    root.append(bar);
  });
  container.replaceChildren(root);
}
