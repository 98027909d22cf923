/// <reference types="vitest/config" />
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the API to a running manager (NEXUS_URL, default :8080).
const target = process.env.NEXUS_URL ?? "http://127.0.0.1:8080";
const proxy = { target, changeOrigin: true, ws: true };

const VENDOR =
  /node_modules[\\/](react|react-dom|scheduler|react-router|react-router-dom|cookie|set-cookie-parser|@mantine[\\/](core|hooks|modals|notifications)|@floating-ui|@tanstack|@tabler|clsx|react-remove-scroll[^\\/]*|react-style-singleton|react-number-format|react-textarea-autosize|use-callback-ref|use-sidecar|get-nonce|detect-node-es|tslib|use-composed-ref|use-isomorphic-layout-effect|use-latest|react-transition-group|dom-helpers|@babel[\\/]runtime)[\\/]/;

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "dist",
    assetsDir: "assets",
    sourcemap: false,
    chunkSizeWarningLimit: 1000,
    rolldownOptions: {
      output: {
        // every page is a lazy chunk (App.tsx), the terminal (xterm.js) and the charts
        // (recharts) too; the libraries every page needs are one vendor chunk whose hash
        // changes only when they do (an app change leaves the browser's copy valid)
        codeSplitting: { groups: [{ name: "vendor", test: VENDOR }] },
      },
    },
  },
  server: {
    proxy: { "/v1": proxy, "/health": proxy, "/openapi.json": proxy, "/docs": proxy },
  },
  test: { environment: "node", include: ["src/**/*.test.ts"] },
});
