// The page's security policy, defined once: scripts/serve.mjs sends it as response headers,
// and webpack.config.js writes it into dist/index.html as <meta> tags for static hosting.
//
// The policy enforces what the page promises: no request leaves its origin. Everything the
// page loads or sends (scripts, the worker, the wasm core, model files, the sample volume)
// comes from 'self'; volumes the user opens are read from disk, never sent anywhere.

const CSP_DIRECTIVES = [
  ['default-src', "'self'"],
  // The worker compiles the Rust core: WebAssembly needs 'wasm-unsafe-eval'. No eval, no inline script.
  ['script-src', "'self' 'wasm-unsafe-eval'"],
  ['worker-src', "'self'"],
  ['connect-src', "'self'"],
  // data: for the page's empty favicon (href="data:,"), blob: for images the viewer may make.
  ['img-src', "'self' data: blob:"],
  // No 'unsafe-inline': the page and NiiVue set styles through the CSSOM (element.style.x = ...),
  // which CSP allows; no inline style attribute or <style> element is used.
  ['style-src', "'self'"],
  ['object-src', "'none'"],
  ['base-uri', "'none'"],
  // Only honoured as a header: a <meta> policy cannot forbid framing (browsers ignore it there).
  ['frame-ancestors', "'none'"],
  ['form-action', "'none'"],
];

const policy = (directives) => directives.map(([name, value]) => `${name} ${value}`).join('; ');

/** The Content-Security-Policy response header. */
export const CONTENT_SECURITY_POLICY = policy(CSP_DIRECTIVES);

/** The same policy for a <meta http-equiv> tag: everything but frame-ancestors, which meta cannot carry. */
export const META_CONTENT_SECURITY_POLICY = policy(CSP_DIRECTIVES.filter(([name]) => name !== 'frame-ancestors'));

/** Powerful features the page never uses, turned off for it and anything it could embed. */
const UNUSED_FEATURES = [
  'accelerometer',
  'autoplay',
  'camera',
  'display-capture',
  'encrypted-media',
  'geolocation',
  'gyroscope',
  'hid',
  'magnetometer',
  'microphone',
  'midi',
  'payment',
  'publickey-credentials-get',
  'screen-wake-lock',
  'serial',
  'usb',
  'xr-spatial-tracking',
];

/** Headers every response of the app carries. */
export const SECURITY_HEADERS = {
  'Content-Security-Policy': CONTENT_SECURITY_POLICY,
  'Referrer-Policy': 'no-referrer',
  'X-Content-Type-Options': 'nosniff',
  'Permissions-Policy': UNUSED_FEATURES.map((feature) => `${feature}=()`).join(', '),
};

/**
 * The <meta> tags that carry what a static host may not send as headers: the policy (less
 * frame-ancestors) and the referrer policy. Permissions-Policy and nosniff have no <meta> form.
 */
export const SECURITY_META_TAGS =
  `<meta http-equiv="Content-Security-Policy" content="${META_CONTENT_SECURITY_POLICY}" />\n` +
  '    <meta name="referrer" content="no-referrer" />';
