// The promptable model's panel (LiteMedSAM): one slice of the volume as the model reads it (the
// file's own voxel grid, no reorientation: columns i, rows j, slices k), boxes drawn on it by
// dragging, objects with names and colours, propagation through a slice range. The page
// (main.js) runs the prompts; this module only keeps them and draws.

const COLOURS = [
  [230, 25, 75],
  [60, 180, 75],
  [255, 225, 25],
  [0, 130, 200],
  [245, 130, 48],
  [145, 30, 180],
  [70, 240, 240],
  [240, 50, 230],
];

/** CT windows offered besides the guess: [value, text]; value `ct:LEVEL:WIDTH` or `mr`. */
const INTENSITIES = [
  ['ct:40:400', 'CT soft tissue (level 40, width 400: the reference default)'],
  ['ct:-600:1500', 'CT lung (level -600, width 1500)'],
  ['ct:400:1800', 'CT bone (level 400, width 1800)'],
  ['ct:40:80', 'CT brain (level 40, width 80)'],
  ['mr', 'MR (0.5 / 99.5 % percentiles of the non-zero voxels)'],
];

export class PromptPanel {
  /**
   * @param {object} el  canvas, slice (range input), sliceText, intensity (select), objects (list),
   *   addObject, from, to, propagate, clear, status
   * @param {{sliceImage: (request) => Promise, onChange: () => void}} hooks  the worker's slice view;
   *   told when the prompts change (the page runs them)
   */
  constructor(el, hooks) {
    this.el = el;
    this.hooks = hooks;
    this.dims = null;
    this.objects = [];
    this.active = 1;
    this.drag = null;
    this.slice = null; // the last {width, height, image, labels} drawn
    el.slice.addEventListener('input', () => {
      this.rangeAround(this.k);
      this.showSlice();
    });
    el.intensity.addEventListener('change', () => this.showSlice());
    el.addObject.addEventListener('click', () => this.addObject());
    el.propagate.addEventListener('click', () => this.propagate());
    el.clear.addEventListener('click', () => {
      for (const o of this.objects) o.prompts = [];
      this.hooks.onChange();
    });
    el.canvas.addEventListener('pointerdown', (e) => this.startBox(e));
    el.canvas.addEventListener('pointermove', (e) => this.moveBox(e));
    el.canvas.addEventListener('pointerup', (e) => this.endBox(e));
  }

  /** A new volume (`dims` i, j, k) read as `guess` ({modality, why}) unless the user says. */
  reset(dims, guess) {
    this.dims = dims;
    this.objects = [];
    this.addObject(false);
    this.el.slice.max = String(dims[2] - 1);
    this.el.slice.value = String(Math.floor(dims[2] / 2));
    this.rangeAround(this.k);
    const auto = new Option(`Guessed: ${guess.modality} (${guess.why})`, 'auto');
    this.el.intensity.replaceChildren(auto, ...INTENSITIES.map(([v, t]) => new Option(t, v)));
    this.showSlice();
  }

  /** Offers slices k - 5 .. k + 5 for propagation: k is their middle, the box's slice. */
  rangeAround(k) {
    this.el.from.value = String(Math.max(0, k - 5));
    this.el.to.value = String(Math.min(this.dims[2] - 1, k + 5));
  }

  get k() {
    return Number(this.el.slice.value);
  }

  /** {modality, window} of the chosen intensity setting, as OPS.prompt takes them. */
  intensity() {
    const [kind, level, width] = this.el.intensity.value.split(':');
    if (kind === 'ct') return { modality: 'CT', window: [Number(level), Number(width)] };
    if (kind === 'mr') return { modality: 'MR', window: null };
    return { modality: null, window: null };
  }

  /** The request's prompts: each object's, in the order objects were added (later ones win). */
  prompts() {
    return this.objects.flatMap((o) => o.prompts);
  }

  /** Registry-style labels of the objects, for the viewer, the legend and the reports. */
  labels() {
    return [{ value: 0, name: 'background', rgb: [0, 0, 0] }, ...this.objects.map(({ label, name, rgb }) => ({ value: label, name, rgb }))];
  }

  /** Replaces the objects by one per reference label, each with its prompts. */
  setReferencePrompts(prompts) {
    const byLabel = new Map();
    for (const p of prompts) byLabel.set(p.label, [...(byLabel.get(p.label) ?? []), p]);
    this.objects = [...byLabel].map(([label, list], n) => ({ label, name: `label ${label}`, rgb: COLOURS[n % COLOURS.length], prompts: list }));
    this.active = this.objects[0]?.label ?? 1;
    this.showObjects();
  }

  addObject(notify = true) {
    const label = Math.max(0, ...this.objects.map((o) => o.label)) + 1;
    this.objects.push({ label, name: `object ${label}`, rgb: COLOURS[(label - 1) % COLOURS.length], prompts: [] });
    this.active = label;
    this.showObjects();
    if (notify) this.drawSlice();
  }

  activeObject() {
    return this.objects.find((o) => o.label === this.active);
  }

  showObjects() {
    this.el.objects.replaceChildren(
      ...this.objects.map((o) => {
        const item = document.createElement('li');
        const pick = document.createElement('input');
        pick.type = 'radio';
        pick.name = 'prompt-object';
        pick.checked = o.label === this.active;
        pick.title = `draw boxes for label ${o.label}`;
        pick.addEventListener('change', () => (this.active = o.label));
        const swatch = document.createElement('span');
        swatch.className = 'swatch';
        swatch.style.background = `rgb(${o.rgb.join(',')})`;
        const name = document.createElement('input');
        name.value = o.name;
        name.dataset.testid = `object-name-${o.label}`;
        name.addEventListener('change', () => (o.name = name.value.trim() || `object ${o.label}`));
        const count = document.createElement('small');
        const boxes = o.prompts.filter((p) => p.box).length;
        const ranges = o.prompts.filter((p) => p.box3d).length;
        count.textContent = ` label ${o.label} · ${boxes} box(es), ${ranges} propagation(s)`;
        item.append(pick, swatch, name, count);
        return item;
      }),
    );
  }

  /** Asks the worker for slice k (the model's intensities, the last run's labels) and draws it. */
  async showSlice() {
    if (!this.dims) return;
    const k = this.k;
    this.el.sliceText.textContent = `slice k = ${k} of 0–${this.dims[2] - 1}`;
    const { modality, window } = this.intensity();
    const [level, width] = window ?? [40, 400];
    try {
      const slice = await this.hooks.sliceImage({ k, modality, level, width });
      if (k === this.k) {
        this.slice = slice;
        this.drawSlice();
      }
    } catch (err) {
      this.el.status.textContent = `Slice ${k} could not be shown (${err.message ?? err}).`;
    }
  }

  drawSlice(preview = null) {
    const slice = this.slice;
    if (!slice) return;
    const { width, height, image, labels } = slice;
    const canvas = this.el.canvas;
    const scale = Math.max(1, Math.floor(512 / Math.max(width, height)));
    canvas.width = width * scale;
    canvas.height = height * scale;
    const pixels = new ImageData(width, height);
    const colours = new Map(this.objects.map((o) => [o.label, o.rgb]));
    for (let n = 0; n < width * height; n++) {
      let [r, g, b] = [image[n], image[n], image[n]];
      const rgb = labels && labels[n] ? colours.get(labels[n]) ?? [255, 255, 255] : null;
      if (rgb) [r, g, b] = [0.55 * r + 0.45 * rgb[0], 0.55 * g + 0.45 * rgb[1], 0.55 * b + 0.45 * rgb[2]];
      pixels.data.set([r, g, b, 255], 4 * n);
    }
    const off = new OffscreenCanvas(width, height);
    off.getContext('2d').putImageData(pixels, 0, 0);
    const ctx = canvas.getContext('2d');
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
    const rect = ([i0, j0, i1, j1], colour, dashed) => {
      ctx.setLineDash(dashed ? [6, 4] : []);
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.strokeRect(i0 * scale, j0 * scale, (i1 - i0 + 1) * scale, (j1 - j0 + 1) * scale);
    };
    for (const o of this.objects) {
      for (const p of o.prompts) {
        if (p.box && p.k === this.k) rect(p.box, `rgb(${o.rgb})`, false);
        if (p.box3d && p.box3d[2] <= this.k && this.k <= p.box3d[5]) {
          rect([p.box3d[0], p.box3d[1], p.box3d[3], p.box3d[4]], `rgb(${o.rgb})`, true);
        }
      }
    }
    if (preview) rect(preview, '#ffffff', true);
  }

  /** The voxel (i, j) under a pointer event, clamped to the slice. */
  voxelAt(event) {
    const r = this.el.canvas.getBoundingClientRect();
    const { width, height } = this.slice;
    const clamp = (v, n) => Math.min(n - 1, Math.max(0, Math.floor(v)));
    return [clamp(((event.clientX - r.left) / r.width) * width, width), clamp(((event.clientY - r.top) / r.height) * height, height)];
  }

  /** Test hook: the client coordinates of voxel (i, j)'s centre on the canvas. */
  voxelToClient(i, j) {
    const r = this.el.canvas.getBoundingClientRect();
    return [r.left + ((i + 0.5) / this.slice.width) * r.width, r.top + ((j + 0.5) / this.slice.height) * r.height];
  }

  startBox(event) {
    if (!this.slice || !this.activeObject()) return;
    this.el.canvas.setPointerCapture(event.pointerId);
    this.drag = this.voxelAt(event);
  }

  moveBox(event) {
    if (this.drag) this.drawSlice(this.boxTo(event));
  }

  boxTo(event) {
    const [a, b] = this.drag;
    const [c, d] = this.voxelAt(event);
    return [Math.min(a, c), Math.min(b, d), Math.max(a, c), Math.max(b, d)];
  }

  /** A box drawn on slice k for the active object replaces its box there. */
  endBox(event) {
    if (!this.drag) return;
    const box = this.boxTo(event);
    this.drag = null;
    const o = this.activeObject();
    o.prompts = [...o.prompts.filter((p) => !(p.box && p.k === this.k)), { box, k: this.k, label: o.label }];
    this.showObjects();
    this.drawSlice();
    this.hooks.onChange();
  }

  /** Propagates the active object's box on this slice through slices `from`..`to`, as the
   *  reference does (from the middle slice outwards; the two end slices stay empty). */
  propagate() {
    const o = this.activeObject();
    const drawn = o?.prompts.find((p) => p.box && p.k === this.k);
    const from = Number(this.el.from.value);
    const to = Number(this.el.to.value);
    if (!drawn) {
      this.el.status.textContent = `Draw a box for ${o?.name ?? 'an object'} on slice ${this.k} first: propagation starts from it.`;
      return;
    }
    if (!(Number.isInteger(from) && Number.isInteger(to) && from < to && from >= 0 && to < this.dims[2])) {
      this.el.status.textContent = `Propagate from a first to a last slice, 0 ≤ first < last ≤ ${this.dims[2] - 1}.`;
      return;
    }
    const [i0, j0, i1, j1] = drawn.box;
    o.prompts = [...o.prompts.filter((p) => p !== drawn), { box3d: [i0, j0, from, i1, j1, to], label: o.label }];
    this.showObjects();
    this.hooks.onChange();
  }
}
