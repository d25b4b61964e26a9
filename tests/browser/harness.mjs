// Shared set-up for the browser tests: a fresh database, the real app
// binary on a free port, and Debian's Chromium driven by playwright-core.
// Run through `just test`, which loads .data/kiroku.env.
import { spawn, spawnSync, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync } from "node:fs";
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

export const fixtures = path.join(root, "tests", "fixtures");

/** A fake camera: the fixture photos, twenty seconds each (Y4M at 2 fps). */
export function fakeCamera() {
  mkdirSync(artifacts, { recursive: true });
  const out = path.join(artifacts, "camera.y4m");
  if (!existsSync(out)) {
    const photos = ["astronaut.jpg", "rocket.jpg", "coffee.jpg"].map((p) => path.join(fixtures, "photos", p));
    execFileSync("ffmpeg", [
      "-v", "error", "-y",
      ...photos.flatMap((p) => ["-loop", "1", "-t", "20", "-i", p]),
      "-filter_complex",
      "[0]scale=640:480,setsar=1[a];[1]scale=640:480,setsar=1[b];[2]scale=640:480,setsar=1[c];[a][b][c]concat=n=3:v=1:a=0,fps=2,format=yuv420p",
      out,
    ]);
  }
  return out;
}

/** Chromium with a fake microphone (a fixture WAV) and camera. */
export async function launchWithMedia(wav) {
  return await launch([
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    `--use-file-for-fake-audio-capture=${wav}`,
    `--use-file-for-fake-video-capture=${fakeCamera()}`,
    "--autoplay-policy=no-user-gesture-required",
  ]);
}

export async function launch(extra = []) {
  mkdirSync(artifacts, { recursive: true });
  return await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      ...extra,
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

export async function signIn(page, base, username, password) {
  await page.goto(`${base}/login`);
  await page.waitForSelector("html[data-island-ready] #login-form");
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click("#login-form button[type=submit]");
}

/** Creates a user and takes them through first sign-in and key setup. */
export async function setUpUser(page, app, name, password) {
  const temp = app.addUser(name);
  await signIn(page, app.base, name, temp);
  await page.waitForURL(/\/setup$/);
  await page.waitForSelector("#setup-form");
  await page.fill("#password", password);
  await page.fill("#repeat", password);
  await page.click("#setup-form button[type=submit]");
  await page.waitForURL(/\/projects$/, { timeout: 60_000 });
  return temp;
}

/** Decoded duration of a media file, in seconds (ffmpeg decodes it all). */
export function decodedSeconds(file) {
  const r = spawnSync("ffmpeg", ["-v", "info", "-stats", "-i", file, "-f", "null", "-"], { encoding: "utf8" });
  const times = [...r.stderr.matchAll(/time=(\d+):(\d+):(\d+(?:\.\d+)?)/g)];
  if (!times.length) throw new Error(`ffmpeg could not decode ${file}: ${r.stderr.slice(-500)}`);
  const [, h, m, sec] = times[times.length - 1];
  return Number(h) * 3600 + Number(m) * 60 + Number(sec);
}

export function psql(env, sql) {
  return execFileSync("psql", [env.KIROKU_MIGRATE_DATABASE_URL, "-At", "-c", sql]).toString().trim();
}

/** Starts `kiroku-export` on `port` with the app's configuration. */
export async function startExport(appEnv, port) {
  const env = { ...appEnv, KIROKU_EXPORT_LISTEN: `127.0.0.1:${port}` };
  const logs = [];
  const child = spawn(bin("kiroku-export"), [], { env, cwd: root });
  child.stdout.on("data", (d) => logs.push(d.toString()));
  child.stderr.on("data", (d) => logs.push(d.toString()));
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 150; i++) {
    try {
      if ((await fetch(`${base}/readyz`)).status === 200) break;
    } catch {}
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    base,
    logs,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("exit", r));
    },
  };
}

/**
 * Seals `plaintext` for the holder of `spki` exactly as CRYPTO.md §4 says,
 * with Node's WebCrypto (an implementation none of us wrote).
 */
export async function seal(spki, artifactId, kind, plaintext) {
  const { subtle } = globalThis.crypto;
  const dek = globalThis.crypto.getRandomValues(new Uint8Array(32));
  const nonce = globalThis.crypto.getRandomValues(new Uint8Array(12));
  const aad = new TextEncoder().encode(`kiroku/v1/artifact|${artifactId}|${kind}`);
  const aes = await subtle.importKey("raw", dek, "AES-GCM", false, ["encrypt"]);
  const ct = new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: aad }, aes, plaintext));
  const rsa = await subtle.importKey("spki", spki, { name: "RSA-OAEP", hash: "SHA-256" }, false, ["encrypt"]);
  const dekEnc = new Uint8Array(await subtle.encrypt({ name: "RSA-OAEP" }, rsa, dek));
  const object = Buffer.concat([Buffer.from("KRK1"), nonce, ct]);
  const sha = Buffer.from(await subtle.digest("SHA-256", object));
  return { object, dekEnc: Buffer.from(dekEnc), sha };
}

/** Starts `kiroku-worker` against the app's database and queue. */
export async function startWorker(appEnv, extraEnv = {}) {
  const port = await freePort();
  const env = {
    ...appEnv,
    KIROKU_WORKER_DATABASE_URL: withDb(need("KIROKU_WORKER_DATABASE_URL"), new URL(appEnv.KIROKU_APP_DATABASE_URL).pathname.slice(1)),
    KIROKU_WORKER_LISTEN: `127.0.0.1:${port}`,
    KIROKU_QUEUE_BACKOFF_SECS: "2",
    ...extraEnv,
  };
  const logs = [];
  const child = spawn(bin("kiroku-worker"), [], { env, cwd: root });
  child.stdout.on("data", (d) => logs.push(d.toString()));
  child.stderr.on("data", (d) => logs.push(d.toString()));
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200) break;
    } catch {}
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    logs,
    child,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await new Promise((r) => child.once("exit", r));
      }
    },
  };
}
