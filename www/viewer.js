// The NiiVue viewer: the input volume in grey, the segmentation on top as a label overlay
// coloured from the model's registry labels; axial, coronal and sagittal planes plus a 3-D render.
import { Niivue, NVImage, SHOW_RENDER } from '@niivue/niivue';

/** A NiiVue label colormap from registry labels [{value, name, rgb: [r, g, b]}]. */
export function labelColormap(labels) {
  const sorted = [...labels].sort((a, b) => a.value - b.value);
  return {
    R: sorted.map((l) => l.rgb[0]),
    G: sorted.map((l) => l.rgb[1]),
    B: sorted.map((l) => l.rgb[2]),
    A: sorted.map((l) => (l.value === 0 ? 0 : 255)), // background stays see-through
    I: sorted.map((l) => l.value),
    labels: sorted.map((l) => l.name),
  };
}

/** The error map's colours: 1 = false positive, 2 = false negative. */
export const ERROR_COLOURS = [
  { value: 0, name: 'agree', rgb: [0, 0, 0] },
  { value: 1, name: 'false positive (model only)', rgb: [255, 140, 0] },
  { value: 2, name: 'false negative (reference only)', rgb: [0, 200, 255] },
];

export class Viewer {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.canvas = canvas;
    this.nv = null;
    this.background = null;
    this.overlay = null;
    this.errors = null;
    this.opacity = 0.5;
  }

  /** Starts NiiVue; throws (e.g. no WebGL2) and leaves the viewer off. */
  async start() {
    const nv = new Niivue({
      backColor: [0, 0, 0, 1],
      show3Dcrosshair: true,
      multiplanarShowRender: SHOW_RENDER.ALWAYS,
      dragAndDropEnabled: false, // the page handles drops: files go through the core first
      isColorbar: false,
      logLevel: 'warn',
      loadingText: '',
    });
    await nv.attachToCanvas(this.canvas);
    nv.setSliceType(nv.sliceTypeMultiplanar);
    this.nv = nv;
  }

  get running() {
    return this.nv !== null;
  }

  /** Shows a volume (file bytes) as the grey background, dropping any overlay. */
  async showVolume(bytes, fileName) {
    if (!this.nv) return;
    const image = await NVImage.loadFromUrl({
      url: bytes.slice().buffer,
      name: fileName,
      colormap: 'gray',
    });
    for (const v of [...this.nv.volumes]) this.nv.removeVolume(v);
    this.nv.addVolume(image);
    this.background = image;
    this.overlay = null;
    this.errors = null;
    this.nv.setSliceType(this.nv.sliceTypeMultiplanar);
  }

  /** Shows a segmentation (.nii.gz bytes on the background's grid) with the model's colours. */
  async showLabels(bytes, fileName, labels) {
    if (!this.nv || !this.background) return;
    const image = await NVImage.loadFromUrl({
      url: bytes.slice().buffer,
      name: fileName,
      opacity: this.opacity,
    });
    image.setColormapLabel(labelColormap(labels));
    if (this.overlay) this.nv.removeVolume(this.overlay);
    this.hideErrors();
    this.nv.addVolume(image);
    this.overlay = image;
  }

  /** Shows an error map (.nii.gz: 1 false positive, 2 false negative) above the segmentation. */
  async showErrors(bytes, fileName) {
    if (!this.nv || !this.background) return;
    const image = await NVImage.loadFromUrl({ url: bytes.slice().buffer, name: fileName, opacity: this.opacity });
    image.setColormapLabel(labelColormap(ERROR_COLOURS));
    this.hideErrors();
    this.nv.addVolume(image);
    this.errors = image;
  }

  hideErrors() {
    if (this.nv && this.errors) this.nv.removeVolume(this.errors);
    this.errors = null;
  }

  /** The opacity of the segmentation and of the error map. */
  setOpacity(opacity) {
    this.opacity = opacity;
    if (!this.nv) return;
    for (const image of [this.overlay, this.errors]) {
      if (image) this.nv.setOpacity(this.nv.getVolumeIndexByID(image.id), opacity);
    }
  }
}
