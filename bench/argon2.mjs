// Argon2id in the browser: the island's own wasm build against hash-wasm,
// in the same headless Chromium page, at the default KDF parameters
// (m = 65536 KiB, t = 3, p = 4, 32-byte output, 16-byte salt).
//
// Run with `just bench-argon2` (which builds the island first), or
// `node bench/argon2.mjs` after `just island`. BENCH_RUNS sets the number
// of timed runs per implementation (default 11, minimum 7; the median is
// the headline figure); one warm-up each comes first and is not counted.
// BENCH_COLD_RUNS (default 5, 0 to skip) adds a secondary figure: the first
// derivation in a fresh page, which is what a sign-in actually pays.
//
// Every run feeds both implementations the same password and a fresh random
// salt and requires the same output (an interoperability check); the
// warm-up also checks both against the known-answer vector in
// crypto/tests/data/crypto-vectors.json. Exits non-zero on a crash or a
// mismatch only; missing the speed goal is reported, not failed.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { launchBrowser, median, serve } from "./page.mjs";

const root = path.resolve(import.meta.dirname, "..");
const PARAMS = { m_kib: 65536, t: 3, p: 4 };
const RUNS = Math.max(7, Number.parseInt(process.env.BENCH_RUNS ?? "11", 10) || 7);
const COLD_RUNS = Math.max(0, Number.parseInt(process.env.BENCH_COLD_RUNS ?? "5", 10) || 0);
const GOAL = 0.8; // island time ≤ 0.8 × hash-wasm's

const pageHtml = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Argon2id bench</title></head>
<body><p id="status">loading</p>
<script type="module">
import init, { argon2id_hex } from "/island/kiroku_island.js";
import { argon2id } from "/hash-wasm/index.esm.js";

await init();

const impls = {
  island: (password, salt, m, t, p) => argon2id_hex(password, salt, m, t, p),
  "hash-wasm": (password, salt, m, t, p) =>
    argon2id({ password, salt, memorySize: m, iterations: t, parallelism: p,
               hashLength: 32, outputType: "hex" }),
};

// One timed derivation; the salt comes as hex so that Node chooses it.
window.benchRun = async (name, password, saltHex, m, t, p) => {
  const salt = new Uint8Array(saltHex.match(/../g).map((h) => parseInt(h, 16)));
  const t0 = performance.now();
  const hex = await impls[name](password, salt, m, t, p);
  const ms = performance.now() - t0;
  return { hex, ms };
};
window.benchInfo = () => ({
  userAgent: navigator.userAgent,
  hardwareConcurrency: navigator.hardwareConcurrency,
  crossOriginIsolated: self.crossOriginIsolated,
});
document.getElementById("status").textContent = "ready";
window.benchReady = true;
</script></body></html>
`;

const b64urlToHex = (s) => Buffer.from(s, "base64url").toString("hex");
const randomHex = (n) => Buffer.from(crypto.getRandomValues(new Uint8Array(n))).toString("hex");

// A fresh page (in its own browser context) with both modules loaded;
// `run` times one derivation in it at the default parameters.
async function openPage(browser, base) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e));
  const wasmTypes = [];
  page.on("response", (r) => {
    if (r.url().endsWith(".wasm")) wasmTypes.push([r.url(), r.headers()["content-type"]]);
  });
  await page.goto(`${base}/`);
  try {
    await page.waitForFunction(() => window.benchReady === true, null, { timeout: 60_000 });
  } catch (err) {
    throw new Error(`bench page did not load: ${pageErrors.map(String).join("; ") || err}`);
  }
  if (!wasmTypes.length) throw new Error("the island's wasm was not fetched");
  for (const [url, type] of wasmTypes) {
    if (type !== "application/wasm") throw new Error(`${url} served as ${type}`);
  }
  const run = (name, password, saltHex) =>
    page.evaluate(
      ([n, pw, s, m, t, p]) => window.benchRun(n, pw, s, m, t, p),
      [name, password, saltHex, PARAMS.m_kib, PARAMS.t, PARAMS.p],
    );
  return { page, run, close: () => context.close() };
}

async function main() {
  const vectors = JSON.parse(
    await readFile(path.join(root, "crypto", "tests", "data", "crypto-vectors.json"), "utf8"),
  );
  const kat = vectors.kdf.find(
    (v) => v.password_is_nfc && v.m_kib === PARAMS.m_kib && v.t === PARAMS.t && v.p === PARAMS.p,
  );
  if (!kat) throw new Error("no known-answer vector at the default parameters");

  const server = await serve(pageHtml, {
    "/island/": path.join(root, "static", "island"),
    "/hash-wasm/": path.join(root, "node_modules", "hash-wasm", "dist"),
  });
  const base = `http://127.0.0.1:${server.address().port}`;
  const browser = await launchBrowser();
  let failed = false;
  try {
    const { page, run } = await openPage(browser, base);
    const info = await page.evaluate(() => window.benchInfo());
    const names = ["island", "hash-wasm"];

    // Warm-up (not counted): the known-answer vector through both.
    const want = b64urlToHex(kat.master);
    let katOk = true;
    for (const name of names) {
      const { hex, ms } = await run(name, kat.password, b64urlToHex(kat.salt));
      const ok = hex === want;
      console.error(`warm-up ${name}: ${ms.toFixed(0)} ms, known answer ${ok ? "ok" : "MISMATCH"}`);
      if (!ok) {
        console.error(`  want ${want}\n  got  ${hex}`);
        katOk = false;
        failed = true;
      }
    }

    // Timed runs, alternating which implementation goes first so that
    // neither always runs on a warmer or cooler machine.
    const times = { island: [], "hash-wasm": [] };
    const mismatches = [];
    for (let i = 0; i < RUNS; i++) {
      const password = `kiroku bench ${i} función`;
      const saltHex = randomHex(16);
      const order = i % 2 ? [...names].reverse() : names;
      const out = {};
      for (const name of order) {
        const r = await run(name, password, saltHex);
        times[name].push(r.ms);
        out[name] = r.hex;
      }
      if (out.island !== out["hash-wasm"] || out.island.length !== 64) {
        mismatches.push({ run: i, password, salt: saltHex, ...out });
      }
      console.error(
        `run ${i + 1}/${RUNS}: island ${times.island[i].toFixed(0)} ms, ` +
          `hash-wasm ${times["hash-wasm"][i].toFixed(0)} ms, ` +
          `outputs ${out.island === out["hash-wasm"] ? "equal" : "DIFFER"}`,
      );
    }

    // Secondary figure: the first derivation in a fresh page, as a real
    // sign-in runs it (one derivation per page load). Each implementation
    // gets its own fresh page; the island's init() has already run there,
    // hash-wasm compiles its small module inside the call.
    const cold = { island: [], "hash-wasm": [] };
    for (let i = 0; i < COLD_RUNS; i++) {
      const password = `kiroku cold ${i}`;
      const saltHex = randomHex(16);
      const order = i % 2 ? [...names].reverse() : names;
      const out = {};
      for (const name of order) {
        const fresh = await openPage(browser, base);
        try {
          const r = await fresh.run(name, password, saltHex);
          cold[name].push(r.ms);
          out[name] = r.hex;
        } finally {
          await fresh.close();
        }
      }
      if (out.island !== out["hash-wasm"]) {
        mismatches.push({ run: `cold ${i}`, password, salt: saltHex, ...out });
      }
      console.error(
        `cold ${i + 1}/${COLD_RUNS}: island ${cold.island[i].toFixed(0)} ms, ` +
          `hash-wasm ${cold["hash-wasm"][i].toFixed(0)} ms, ` +
          `outputs ${out.island === out["hash-wasm"] ? "equal" : "DIFFER"}`,
      );
    }
    if (mismatches.length) failed = true;

    const med = Object.fromEntries(names.map((n) => [n, median(times[n])]));
    const ratio = med.island / med["hash-wasm"];
    const version = browser.version();
    const row = (a, b, c, d) => `${a.padEnd(10)} ${b.padStart(12)} ${c.padStart(10)} ${d.padStart(10)}`;
    console.log(`Argon2id m=${PARAMS.m_kib} KiB t=${PARAMS.t} p=${PARAMS.p}, 32-byte output, 16-byte salt`);
    console.log(`Chromium ${version} (headless), ${info.hardwareConcurrency} logical cores, ${RUNS} runs after 1 warm-up`);
    console.log(row("impl", "median ms", "min ms", "max ms"));
    for (const n of names) {
      console.log(
        row(n, med[n].toFixed(1), Math.min(...times[n]).toFixed(1), Math.max(...times[n]).toFixed(1)),
      );
    }
    if (COLD_RUNS) {
      console.log(
        `first call in a fresh page (median of ${COLD_RUNS}): island ${median(cold.island).toFixed(1)} ms, ` +
          `hash-wasm ${median(cold["hash-wasm"]).toFixed(1)} ms, ` +
          `ratio ${(median(cold.island) / median(cold["hash-wasm"])).toFixed(2)}`,
      );
    }
    console.log(
      `ratio island/hash-wasm: ${ratio.toFixed(2)} (goal ≤ ${GOAL}: ${ratio <= GOAL ? "met" : "NOT met"})`,
    );
    console.log(
      `outputs: ${mismatches.length ? `${mismatches.length} MISMATCH(ES)` : "equal in every run"}` +
        `; known-answer vector: ${katOk ? "ok for both" : "MISMATCH (see above)"}`,
    );
    for (const m of mismatches) console.log(`  mismatch: ${JSON.stringify(m)}`);
    console.log(
      JSON.stringify({
        bench: "argon2id",
        params: { ...PARAMS, hash_len: 32, salt_len: 16 },
        chromium: version,
        hardware_concurrency: info.hardwareConcurrency,
        runs: RUNS,
        island_ms: times.island.map((x) => +x.toFixed(2)),
        hash_wasm_ms: times["hash-wasm"].map((x) => +x.toFixed(2)),
        island_median_ms: +med.island.toFixed(2),
        hash_wasm_median_ms: +med["hash-wasm"].toFixed(2),
        ratio: +ratio.toFixed(3),
        goal_ratio: GOAL,
        cold_runs: COLD_RUNS,
        cold_island_ms: cold.island.map((x) => +x.toFixed(2)),
        cold_hash_wasm_ms: cold["hash-wasm"].map((x) => +x.toFixed(2)),
        cold_ratio: COLD_RUNS ? +(median(cold.island) / median(cold["hash-wasm"])).toFixed(3) : null,
        goal_met: ratio <= GOAL,
        outputs_equal: mismatches.length === 0,
        known_answer_ok: katOk,
        ok: !failed,
      }),
    );
  } finally {
    await browser.close();
    server.close();
  }
  return failed ? 1 : 0;
}

process.exitCode = await main();
