// Colours the console can read: WCAG 2 AA wants a contrast of 4.5:1 for text. Mantine's default
// palette misses it for several pairs (white on blue.6 is 3.6:1, the light variant's text on its
// hover background 4.0:1, the dimmed grey 3.3:1), so the theme's CSS variables are derived here:
// the darkest shade needed, or a shade darkened until it is readable.

/** Relative luminance of a #rrggbb colour (WCAG 2). */
export function luminance(hex: string): number {
  const c = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255);
  const [r, g, b] = c.map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

export function contrast(a: string, b: string): number {
  const [x, y] = [luminance(a), luminance(b)];
  return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05);
}

/** `hex` mixed with black by `amount` (0..1). */
export function darken(hex: string, amount: number): string {
  const c = [1, 3, 5].map((i) => Math.round(parseInt(hex.slice(i, i + 2), 16) * (1 - amount)));
  return `#${c.map((v) => v.toString(16).padStart(2, "0")).join("")}`;
}

/** A foreground readable on `bg` (at least `ratio`): the first shade from `from` that is, else
 * the darkest shade darkened step by step. */
export function readable(shades: readonly string[], bg: string, from = 6, ratio = 4.6): string {
  for (let i = from; i < shades.length; i++) if (contrast(shades[i], bg) >= ratio) return shades[i];
  let c = shades[shades.length - 1];
  for (let k = 0.05; contrast(c, bg) < ratio && k < 1; k += 0.05) c = darken(shades[shades.length - 1], k);
  return c;
}

/** Light-scheme variables for each colour: text, outline, filled (white text on it), and the
 * light variant's text (readable on its hover background, shade 2). */
export function lightColorVariables(colors: Record<string, readonly string[]>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, shades] of Object.entries(colors)) {
    if (shades.length < 10) continue;
    const fg = readable(shades, "#ffffff");
    out[`--mantine-color-${name}-text`] = fg;
    out[`--mantine-color-${name}-outline`] = fg;
    out[`--mantine-color-${name}-filled`] = fg;
    out[`--mantine-color-${name}-filled-hover`] = darken(fg, 0.15);
    out[`--mantine-color-${name}-light-color`] = readable(shades, shades[2], 9);
  }
  return out;
}
