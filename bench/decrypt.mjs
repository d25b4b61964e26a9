// Opening a sealed artifact in the browser: the island's reader path
// (magic check, RSA-OAEP unwrap of the data key, AES-256-GCM with the
// artifact's AAD, plaintext left on the JS heap) against a bare WebCrypto
// AES-GCM decrypt of the same bytes with an already imported key, in the
// same headless Chromium page.
//
// Run with `just bench-decrypt` (which builds the island first). BENCH_MIB
// sets the artifact size (default 50), BENCH_RUNS the timed runs per path
// (default 11, minimum 5; the median is the headline). The page seals a
// random plaintext per CRYPTO.md §4 with WebCrypto alone, so this also
// checks that the island opens what an independent implementation sealed.
// Exits non-zero on a crash, a wrong plaintext, or a tampered object that
// opens; missing the speed goal is reported, not failed.
import path from "node:path";
import { launchBrowser, median, serve } from "./page.mjs";

const root = path.resolve(import.meta.dirname, "..");
const MIB = Math.max(1, Number.parseInt(process.env.BENCH_MIB ?? "50", 10) || 50);
const RUNS = Math.max(5, Number.parseInt(process.env.BENCH_RUNS ?? "11", 10) || 5);
const GOAL = 0.8; // raw time / island time ≥ 0.8

const pageHtml = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Decrypt bench</title></head>
<body><p id="status">loading</p>
<script type="module">
import init, { bench_import_private, bench_open } from "/island/kiroku_island.js";
await init();

const subtle = crypto.subtle;
const enc = new TextEncoder();
const OAEP = { name: "RSA-OAEP", hash: "SHA-256" };
let s = null;

async function digestHex(buf) {
  const d = new Uint8Array(await subtle.digest("SHA-256", buf));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Seals size bytes of random plaintext as the worker would (CRYPTO.md §4).
window.benchSetup = async (size) => {
  const plain = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(plain.subarray(i, Math.min(size, i + 65536)));
  const pair = await subtle.generateKey(
    { ...OAEP, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) }, true, ["encrypt", "decrypt"]);
  const pkcs8 = new Uint8Array(await subtle.exportKey("pkcs8", pair.privateKey));
  const dek = crypto.getRandomValues(new Uint8Array(32));
  const nonce = crypto.getRandomValues(new Uint8Array(12));
  const id = crypto.randomUUID();
  const kind = "pdf";
  const aad = enc.encode("kiroku/v1/artifact|" + id + "|" + kind);
  const aesKey = await subtle.importKey("raw", dek, "AES-GCM", false, ["encrypt", "decrypt"]);
  const ct = new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: aad }, aesKey, plain));
  const object = new Uint8Array(16 + ct.length);
  object.set(enc.encode("KRK1"), 0);
  object.set(nonce, 4);
  object.set(ct, 16);
  const dekEnc = new Uint8Array(await subtle.encrypt(OAEP, pair.publicKey, dek));
  const held = await bench_import_private(pkcs8);
  s = { id, kind, aad, nonce, aesKey, object, dekEnc, held, want: await digestHex(plain) };
  return { objectBytes: object.length };
};

const paths = {
  island: () => bench_open(s.held, s.id, s.kind, s.dekEnc, s.object),
  webcrypto: () => subtle.decrypt({ name: "AES-GCM", iv: s.nonce, additionalData: s.aad }, s.aesKey, s.object.subarray(16)),
};

// One timed opening; the plaintext is checked after the clock stops.
window.benchRun = async (name) => {
  const t0 = performance.now();
  const out = await paths[name]();
  const ms = performance.now() - t0;
  return { ms, ok: (await digestHex(out)) === s.want };
};

// A flipped bit anywhere must not open, and must say so.
window.benchTampered = async (at) => {
  const object = s.object.slice();
  object[at] ^= 0x01;
  try {
    await bench_open(s.held, s.id, s.kind, s.dekEnc, object);
    return "opened";
  } catch (e) {
    return String(e);
  }
};
window.benchInfo = () => ({ hardwareConcurrency: navigator.hardwareConcurrency });
document.getElementById("status").textContent = "ready";
window.benchReady = true;
</script></body></html>
`;

async function main() {
  const server = await serve(pageHtml, { "/island/": path.join(root, "static", "island") });
  const base = `http://127.0.0.1:${server.address().port}`;
  const browser = await launchBrowser();
  let failed = false;
  try {
    const page = await (await browser.newContext()).newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${base}/`);
    try {
      await page.waitForFunction(() => window.benchReady === true, null, { timeout: 60_000 });
    } catch (err) {
      throw new Error(`bench page did not load: ${errors.join("; ") || err}`);
    }
    const size = MIB * 1024 * 1024;
    const { objectBytes } = await page.evaluate((n) => window.benchSetup(n), size);
    const info = await page.evaluate(() => window.benchInfo());
    const names = ["island", "webcrypto"];
    for (const name of names) {
      const r = await page.evaluate((n) => window.benchRun(n), name);
      console.error(`warm-up ${name}: ${r.ms.toFixed(1)} ms, plaintext ${r.ok ? "ok" : "WRONG"}`);
      if (!r.ok) failed = true;
    }
    const times = { island: [], webcrypto: [] };
    for (let i = 0; i < RUNS; i++) {
      const order = i % 2 ? [...names].reverse() : names;
      for (const name of order) {
        const r = await page.evaluate((n) => window.benchRun(n), name);
        times[name].push(r.ms);
        if (!r.ok) failed = true;
      }
      console.error(`run ${i + 1}/${RUNS}: island ${times.island[i].toFixed(1)} ms, webcrypto ${times.webcrypto[i].toFixed(1)} ms`);
    }
    const tamper = [];
    for (const at of [0, 5, 16, Math.floor(objectBytes / 2), objectBytes - 1]) {
      const outcome = await page.evaluate((n) => window.benchTampered(n), at);
      tamper.push({ at, outcome });
      if (outcome === "opened") failed = true;
    }
    if (errors.length) failed = true;

    const med = Object.fromEntries(names.map((n) => [n, median(times[n])]));
    const ratio = med.webcrypto / med.island;
    const row = (a, b, c, d, e) =>
      `${a.padEnd(10)} ${b.padStart(10)} ${c.padStart(8)} ${d.padStart(8)} ${e.padStart(10)}`;
    console.log(`Opening a sealed ${MIB} MiB artifact (${objectBytes} bytes stored)`);
    console.log(`Chromium ${browser.version()} (headless), ${info.hardwareConcurrency} logical cores, ${RUNS} runs after 1 warm-up`);
    console.log(row("path", "median ms", "min ms", "max ms", "MiB/s"));
    for (const n of names) {
      console.log(row(n, med[n].toFixed(1), Math.min(...times[n]).toFixed(1), Math.max(...times[n]).toFixed(1),
        (MIB / (med[n] / 1000)).toFixed(0)));
    }
    console.log(`ratio webcrypto/island time: ${ratio.toFixed(2)} (goal ≥ ${GOAL}: ${ratio >= GOAL ? "met" : "NOT met"})`);
    console.log(`tampered objects: ${tamper.every((t) => t.outcome !== "opened") ? "all refused" : "ONE OPENED"}`);
    console.log(JSON.stringify({
      bench: "decrypt", mib: MIB, chromium: browser.version(), runs: RUNS,
      island_ms: times.island.map((x) => +x.toFixed(2)),
      webcrypto_ms: times.webcrypto.map((x) => +x.toFixed(2)),
      island_median_ms: +med.island.toFixed(2), webcrypto_median_ms: +med.webcrypto.toFixed(2),
      ratio: +ratio.toFixed(3), goal_ratio: GOAL, goal_met: ratio >= GOAL, tamper, page_errors: errors, ok: !failed,
    }));
  } finally {
    await browser.close();
    server.close();
  }
  return failed ? 1 : 0;
}

process.exitCode = await main();
