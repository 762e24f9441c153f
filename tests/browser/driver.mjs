// Headless Chromium for tests/browser.rs, through puppeteer-core and the system's Chromium.
//
// One command per line on stdin, as JSON ({"op": "goto", "url": ...}); one answer per line on
// stdout, in order: {"ok": VALUE} or {"error": "..."}. The first line out is {"ok": "ready"}.
// When stdin ends, the browser closes and its profile is removed.
import { createInterface } from "node:readline";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import puppeteer from "puppeteer-core";

const profile = mkdtempSync(join(tmpdir(), "tower-sse-chromium-"));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  userDataDir: profile,
  // No sandbox as root; nothing that reaches outside this machine.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
const page = await browser.newPage();

// What went wrong in the page since the last `problems` command.
const problems = [];
page.on("console", (m) => {
  if (m.type() === "error") problems.push("console error: " + m.text());
});
page.on("pageerror", (e) => problems.push("page error: " + e.message));
page.on("response", (r) => {
  if (r.status() >= 400) problems.push("HTTP " + r.status() + " for " + r.url());
});

const ops = {
  goto: ({ url }) => page.goto(url, { waitUntil: "load" }).then(() => null),
  viewport: ({ width, height }) => page.setViewport({ width, height }),
  // Replaces the field's text as a user would: select all, then type.
  fill: async ({ selector, text }) => {
    await page.click(selector, { count: 3 });
    await page.keyboard.press("Backspace");
    await page.type(selector, text);
  },
  click: ({ selector }) => page.click(selector),
  eval: ({ expr }) => page.evaluate(expr),
  wait: async ({ expr, timeout_ms }) => {
    const handle = await page.waitForFunction(expr, { timeout: timeout_ms, polling: 100 });
    return handle.jsonValue();
  },
  screenshot: ({ path }) => page.screenshot({ path }).then(() => null),
  problems: () => problems.splice(0),
};

function answer(reply) {
  process.stdout.write(JSON.stringify(reply) + "\n");
}

async function run(line) {
  try {
    const command = JSON.parse(line);
    const op = ops[command.op];
    if (!op) throw new Error("unknown op " + command.op);
    answer({ ok: (await op(command)) ?? null });
  } catch (err) {
    answer({ error: String(err && err.message ? err.message : err) });
  }
}

answer({ ok: "ready" });
let queue = Promise.resolve();
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  queue = queue.then(() => run(line));
});
lines.on("close", () => {
  queue
    .then(() => browser.close())
    .finally(() => {
      rmSync(profile, { recursive: true, force: true });
      process.exit(0);
    });
});
