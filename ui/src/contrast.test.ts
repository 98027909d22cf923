import { DEFAULT_THEME } from "@mantine/core";
import { describe, expect, it } from "vitest";
import { contrast, darken, lightColorVariables, readable } from "./contrast";

describe("contrast", () => {
  it("measures WCAG ratios", () => {
    expect(contrast("#000000", "#ffffff")).toBeCloseTo(21, 1);
    expect(contrast("#228be6", "#ffffff")).toBeCloseTo(3.55, 1);
    expect(darken("#ffffff", 0.5)).toBe("#808080");
  });
  it("picks a readable shade or darkens the last one", () => {
    const blue = DEFAULT_THEME.colors.blue;
    expect(readable(blue, "#ffffff")).toBe(blue[8]);
    const yellow = DEFAULT_THEME.colors.yellow;
    expect(contrast(readable(yellow, "#ffffff"), "#ffffff")).toBeGreaterThanOrEqual(4.5);
  });
  it("gives every colour of the palette readable text, fills and light badges", () => {
    const vars = lightColorVariables(DEFAULT_THEME.colors);
    for (const [name, shades] of Object.entries(DEFAULT_THEME.colors)) {
      expect(contrast(vars[`--mantine-color-${name}-text`], "#ffffff"), name).toBeGreaterThanOrEqual(4.5);
      expect(contrast(vars[`--mantine-color-${name}-filled`], "#ffffff"), name).toBeGreaterThanOrEqual(4.5);
      expect(contrast(vars[`--mantine-color-${name}-light-color`], shades[1]), name).toBeGreaterThanOrEqual(4.5);
      expect(contrast(vars[`--mantine-color-${name}-light-color`], shades[2]), name).toBeGreaterThanOrEqual(4.5);
    }
  });
});
