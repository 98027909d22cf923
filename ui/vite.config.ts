/// <reference types="vitest/config" />
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the API to a running manager (NEXUS_URL, default :8080).
const target = process.env.NEXUS_URL ?? "http://127.0.0.1:8080";
const proxy = { target, changeOrigin: true, ws: true };

export default defineConfig({
  plugins: [react()],
  build: { outDir: "dist", assetsDir: "assets", sourcemap: false, chunkSizeWarningLimit: 4000 },
  server: {
    proxy: { "/v1": proxy, "/health": proxy, "/openapi.json": proxy, "/docs": proxy },
  },
  test: { environment: "node", include: ["src/**/*.test.ts"] },
});
