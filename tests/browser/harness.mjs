// Shared set-up for the browser tests: a fresh database, the real app
// binary on a free port, and Debian's Chromium driven by playwright-core.
// Run through `just test`, which loads .data/kiroku.env.
import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { chromium } from "playwright-core";

export const root = path.resolve(import.meta.dirname, "..", "..");
export const artifacts = path.join(root, "tests", "artifacts");
const targetDir = process.env.CARGO_TARGET_DIR || path.join(root, "target");
export const bin = (name) => path.join(targetDir, "debug", name);

export function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the browser tests through \`just test\``);
  return v;
}

function withDb(url, db) {
  return url.replace(/\/[^/]*$/, `/${db}`);
}

export async function freePort() {
  return await new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Starts `kiroku serve` against a new database; returns helpers. */
export async function startApp(extraEnv = {}) {
  const db = `kiroku_b_${randomBytes(6).toString("hex")}`;
  const owner = need("KIROKU_MIGRATE_DATABASE_URL");
  execFileSync("psql", [owner, "-q", "-c", `CREATE DATABASE ${db}`]);
  const port = await freePort();
  const env = {
    ...process.env,
    KIROKU_MIGRATE_DATABASE_URL: withDb(owner, db),
    KIROKU_APP_DATABASE_URL: withDb(need("KIROKU_APP_DATABASE_URL"), db),
    KIROKU_APP_LISTEN: `127.0.0.1:${port}`,
    KIROKU_PUBLIC_URL: `http://127.0.0.1:${port}`,
    KIROKU_STORAGE: "s3",
    KIROKU_REDIS_PREFIX: `kiroku-btest-${db}`,
    KIROKU_LOG: "warn",
    ...extraEnv,
  };
  execFileSync(bin("kiroku"), ["migrate"], { env, cwd: root });
  const logs = [];
  const child = spawn(bin("kiroku"), ["serve"], { env, cwd: root });
  child.stdout.on("data", (d) => logs.push(d.toString()));
  child.stderr.on("data", (d) => logs.push(d.toString()));
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 150; i++) {
    try {
      const r = await fetch(`${base}/readyz`);
      if (r.status === 200) break;
    } catch {}
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    base,
    env,
    logs,
    addUser(name) {
      const out = execFileSync(bin("kiroku"), ["user", "add", name], { env, cwd: root }).toString();
      const m = out.match(/temporary password \(shown once\): (\S+)/);
      if (!m) throw new Error(`no temporary password in: ${out}`);
      return m[1];
    },
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
      execFileSync("psql", [owner, "-q", "-c", `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`]);
    },
  };
}

export async function launch() {
  mkdirSync(artifacts, { recursive: true });
  return await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  });
}

/** Records every request a page sends, with headers and body. */
export function recordRequests(page) {
  const seen = [];
  page.on("request", (req) => {
    seen.push({
      url: req.url(),
      method: req.method(),
      headers: JSON.stringify(req.headers()),
      body: req.postData() || "",
    });
  });
  return seen;
}

export async function shot(page, name) {
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}
