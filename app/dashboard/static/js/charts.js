// The job page's charts, drawn by uPlot (canvas, built for hundreds of thousands of points): the per-batch
// loss with optional smoothing, and the per-epoch losses and accuracies.

const BLUE = "#1f6feb";
const COLORS = { train: "#1f6feb", test: "#d1242f", val: "#8250df", acc: "#1a7f37", valAcc: "#bf8700" };
const HEIGHT = 250;
// A log axis labels and rules powers of ten only (uPlot also splits between them).
const decades = (u, splits) => splits.map((v) => (Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9 ? v : null));
const decadeLabels = (u, values) => values.map((v) => (v === null ? "" : v >= 0.001 ? String(v) : v.toExponential(0)));
const percentTicks = (u, values) => values.map((v) => `${Math.round(v * 100)}%`);

function widthOf(el) {
  return Math.max(200, el.clientWidth);
}

// Redraws at most once per frame, however many chunks arrive, and keeps the element's data-* in step.
class Chart {
  constructor(el) {
    this.el = el;
    this.plot = null;
    this.pending = false;
    this.resizer = new ResizeObserver(() => this.plot && this.plot.setSize({ width: widthOf(el), height: HEIGHT }));
    this.resizer.observe(el);
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  draw() {
    const data = this.data();
    if (!data[0].length) return;
    if (!this.plot) {
      this.el.replaceChildren();
      this.plot = new window.uPlot({ ...this.options(), width: widthOf(this.el), height: HEIGHT }, data, this.el);
    } else {
      // A zoomed-in view (drag to zoom, double-click to reset) stays where it is while data arrives.
      const x = this.plot.scales.x;
      const zoomed = this.shown && (x.min > this.shown[0] || x.max < this.shown[1]);
      this.plot.setData(data, !zoomed);
    }
    this.shown = [data[0][0], data[0][data[0].length - 1]];
    this.drawn();
  }

  destroy() {
    this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
  }
}

export class LossChart extends Chart {
  constructor(el, smoothing = 0.6) {
    super(el);
    this.steps = [];
    this.losses = [];
    this.smoothed = [];
    this.smoothing = smoothing;
    this.log = false;
    this.resetAverage();
    el.dataset.points = "0";
  }

  resetAverage() {
    this.average = 0;
    this.weight = 0;
  }

  // TensorBoard's smoothing: an exponential moving average, debiased so the first points are not pulled
  // towards zero.
  smooth(loss) {
    if (loss === null) return null; // NaN or infinite on the wire
    const a = this.smoothing;
    this.average = a * this.average + (1 - a) * loss;
    this.weight = a * this.weight + (1 - a);
    return this.average / this.weight;
  }

  add(points) {
    let last = this.steps.length ? this.steps[this.steps.length - 1] : -1;
    for (const p of points) {
      if (p.step <= last) continue; // the server sends each step once; a replay after a reconnect does not
      last = p.step;
      this.steps.push(p.step);
      this.losses.push(p.loss);
      this.smoothed.push(this.smooth(p.loss));
    }
    this.schedule();
  }

  setSmoothing(value) {
    this.smoothing = value;
    this.resetAverage();
    this.smoothed = this.losses.map((loss) => this.smooth(loss));
    this.schedule();
  }

  // A log scale shows the progress a linear one flattens once the loss is small; it has no place for 0.
  setLog(on) {
    this.log = on;
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.shown = null;
    this.schedule();
  }

  data() {
    const positive = (values) => (this.log ? values.map((v) => (v > 0 ? v : null)) : values);
    return [this.steps, positive(this.losses), positive(this.smoothed)];
  }

  drawn() {
    this.el.dataset.points = String(this.steps.length);
  }

  options() {
    return {
      scales: { x: { time: false }, y: this.log ? { distr: 3 } : {} },
      series: [
        { label: "step" },
        { label: "loss", stroke: "rgba(31, 111, 235, 0.28)", width: 1, points: { show: false } },
        { label: "smoothed", stroke: BLUE, width: 2, points: { show: false } },
      ],
      axes: [{ label: "step" }, this.log
        ? { label: "loss", filter: decades, values: decadeLabels, grid: { filter: decades }, ticks: { filter: decades } }
        : { label: "loss" }],
      cursor: { drag: { x: true, y: false } },
    };
  }
}


export class EpochChart extends Chart {
  constructor(el, { validation }) {
    super(el);
    this.validation = validation;
    this.rows = [];
    el.dataset.epochs = "0";
  }

  add(row) {
    if (this.rows.length && row.epoch <= this.rows[this.rows.length - 1].epoch) return;
    this.rows.push(row);
    this.schedule();
  }

  data() {
    const column = (name) => this.rows.map((r) => r[name]);
    const data = [column("epoch"), column("train_loss"), column("test_loss")];
    if (this.validation) data.push(column("val_loss"));
    data.push(column("test_accuracy"));
    if (this.validation) data.push(column("val_accuracy"));
    return data;
  }

  drawn() {
    this.el.dataset.epochs = String(this.rows.length);
  }

  options() {
    const line = (label, scale, stroke, dash) => ({ label, scale, stroke, width: 2, dash, points: { size: 6 } });
    const series = [{ label: "epoch" }, line("train loss", "loss", COLORS.train), line("test loss", "loss", COLORS.test)];
    if (this.validation) series.push(line("val loss", "loss", COLORS.val));
    series.push(line("test accuracy", "acc", COLORS.acc, [6, 4]));
    if (this.validation) series.push(line("val accuracy", "acc", COLORS.valAcc, [6, 4]));
    for (const s of series.slice(1)) {
      s.value = s.scale === "acc" ? (u, v) => (v === null ? "—" : `${(v * 100).toFixed(2)}%`)
        : (u, v) => (v === null ? "—" : v.toFixed(4));
    }
    return {
      scales: {
        x: { time: false, range: (u, min, max) => [Math.min(min, max - 1), Math.max(max, min + 1)] },
        acc: { range: (u, min, max) => [Math.max(0, min - 0.05), Math.min(1, max + 0.05)] },
      },
      series,
      axes: [
        { label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500], values: (u, v) => v.map(String) },
        { scale: "loss", label: "loss" },
        { scale: "acc", label: "accuracy", side: 1, values: percentTicks, grid: { show: false } },
      ],
    };
  }
}
