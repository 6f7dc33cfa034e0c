// Bundles the page (chatsock/static/page/*.js) with its npm libraries
// (chatsock-client from clients/js/dist, marked, DOMPurify, highlight.js from
// node_modules) into chatsock/static/dist/, which git ignores.
// Usage: node scripts/build_page.mjs   (`make deps` runs it; so does the Dockerfile)
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const client = join(root, "clients", "js", "dist", "index.js");
if (!existsSync(client)) {
  console.error("clients/js/dist is missing: build chatsock-client first (make deps does)");
  process.exit(1);
}
await build({
  entryPoints: [join(root, "chatsock", "static", "page", "main.js")],
  outfile: join(root, "chatsock", "static", "dist", "page.js"),
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: true,
  sourcemap: "linked",
  legalComments: "linked",
  alias: { "chatsock-client": client },
  logLevel: "warning",
});
