// Recording on a phone-sized headless Chromium with a fake microphone fed
// from the Spanish fixture and a fake camera showing the fixture photos.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  startApp, launchWithMedia, setUpUser, shot, decodedSeconds, psql, fixtures, artifacts, freePort,
} from "./harness.mjs";
import { cuttingProxy } from "./cutting-proxy.mjs";

let app;
let browser;
const storage = mkdtempSync(path.join(tmpdir(), "kiroku-rec-"));

before(async () => {
  app = await startApp({ KIROKU_STORAGE: "local", KIROKU_STORAGE_DIR: storage });
  browser = await launchWithMedia(path.join(fixtures, "routine-es.wav"));
});

after(async () => {
  await browser?.close();
  await app?.stop();
});

const wait = (ms) => new Promise((r) => setTimeout(r, ms));

async function takePhoto(page, count) {
  await page.click("#photo");
  await page.waitForFunction((n) => document.querySelectorAll("#thumbs img").length >= n, count);
}

test("a minute of recording with a pause and three photos is stored whole and queued", async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, locale: "es-ES" });
  const page = await context.newPage();
  await setUpUser(page, app, "lola", "la función empieza a las nueve");
  await page.click("#new-recording");
  await page.waitForSelector("html[data-island-ready] #record-form");
  await page.fill("#title", "Rutina del espejo");
  await page.fill("#participant", "Lola");
  await page.selectOption("#language", "es");
  await page.click("#record");
  await page.waitForSelector("#clock");
  await page.click("#camera-open");
  await page.waitForFunction(() => document.querySelector("#camera").videoWidth > 0);

  await wait(12_000);
  await takePhoto(page, 1);
  await wait(10_000);
  await page.click("#pause");
  await page.waitForSelector("#clock.paused");
  const pausedAtMs = Number(await page.getAttribute("#clock", "data-ms"));
  await takePhoto(page, 2);
  await wait(4_000);
  await page.click("#pause");
  await wait(20_000);
  await takePhoto(page, 3);
  await shot(page, "recording");
  await wait(16_000);

  await page.click("#stop");
  await page.waitForSelector("#stop-dialog");
  const recordedMs = Number(await page.getAttribute("#clock", "data-ms"));
  await page.click("#finish");
  await page.waitForURL(/\/projects$/, { timeout: 60_000 });

  const projectId = psql(app.env, "SELECT id FROM projects WHERE title = 'Rutina del espejo'");
  assert.equal(psql(app.env, `SELECT status FROM projects WHERE id = '${projectId}'`), "queued");
  const userId = psql(app.env, "SELECT id FROM users WHERE username = 'lola'");
  const dir = path.join(storage, "ingest", userId, projectId);
  const chunks = readdirSync(path.join(dir, "chunks")).sort();
  assert.ok(chunks.length >= 6, `only ${chunks.length} chunks`);
  assert.equal(Number(psql(app.env, `SELECT last_seq FROM projects WHERE id = '${projectId}'`)), chunks.length - 1);
  const joined = path.join(artifacts, "recording.webm");
  writeFileSync(joined, Buffer.concat(chunks.map((c) => readFileSync(path.join(dir, "chunks", c)))));
  const seconds = decodedSeconds(joined);
  assert.ok(Math.abs(seconds - recordedMs / 1000) <= 1.0, `decoded ${seconds} s, recorded ${recordedMs} ms`);
  assert.ok(recordedMs > 55_000, `recorded only ${recordedMs} ms`);

  const photos = readdirSync(path.join(dir, "photos"));
  assert.equal(photos.length, 3);
  const offsets = psql(app.env, `SELECT offset_ms FROM photos WHERE project_id = '${projectId}' ORDER BY offset_ms`)
    .split("\n").map(Number);
  assert.equal(offsets.length, 3);
  // The second photo was taken during the pause: its offset is where the
  // pause began; the others fall before and after it, inside the recording.
  assert.ok(offsets[0] > 10_000 && offsets[0] < pausedAtMs - 9_000, `${offsets} paused at ${pausedAtMs}`);
  assert.ok(Math.abs(offsets[1] - pausedAtMs) < 500, `${offsets} paused at ${pausedAtMs}`);
  assert.ok(offsets[2] > pausedAtMs + 19_000 && offsets[2] < recordedMs - 10_000, `${offsets}`);
  await context.close();
});

test("with the connection cut after every two chunks, no chunk is lost", async () => {
  const proxyPort = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "kiroku-cut-"));
  const flaky = await startApp({
    KIROKU_STORAGE: "local",
    KIROKU_STORAGE_DIR: dir,
    KIROKU_PUBLIC_URL: `http://127.0.0.1:${proxyPort}`,
  });
  const proxy = await cuttingProxy(proxyPort, Number(new URL(flaky.base).port), 2);
  const base = `http://127.0.0.1:${proxyPort}`;
  try {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
    const page = await context.newPage();
    await setUpUser(page, { ...flaky, base }, "nico", "se cae la conexión a cada rato");
    await page.goto(`${base}/record`);
    await page.waitForSelector("html[data-island-ready] #record-form");
    await page.fill("#title", "Entre bambalinas");
    await page.click("#record");
    await page.waitForSelector("#clock");
    await wait(52_000);
    await page.click("#stop");
    await page.waitForSelector("#stop-dialog");
    const recordedMs = Number(await page.getAttribute("#clock", "data-ms"));
    await page.click("#finish");
    await page.waitForURL(/\/projects$/, { timeout: 90_000 });

    assert.ok(proxy.stats.cuts >= 2, `only ${proxy.stats.cuts} cuts`);
    assert.ok(proxy.stats.sockets >= 3, `only ${proxy.stats.sockets} connections`);
    const projectId = psql(flaky.env, "SELECT id FROM projects WHERE title = 'Entre bambalinas'");
    assert.equal(psql(flaky.env, `SELECT status FROM projects WHERE id = '${projectId}'`), "queued");
    const lastSeq = Number(psql(flaky.env, `SELECT last_seq FROM projects WHERE id = '${projectId}'`));
    const stored = Number(psql(flaky.env, `SELECT count(*) FROM chunks WHERE project_id = '${projectId}'`));
    assert.equal(stored, lastSeq + 1, "a chunk is missing");
    const userId = psql(flaky.env, "SELECT id FROM users WHERE username = 'nico'");
    const chunkDir = path.join(dir, "ingest", userId, projectId, "chunks");
    const joined = path.join(artifacts, "recording-cut.webm");
    const files = readdirSync(chunkDir).sort();
    writeFileSync(joined, Buffer.concat(files.map((c) => readFileSync(path.join(chunkDir, c)))));
    const seconds = decodedSeconds(joined);
    assert.ok(Math.abs(seconds - recordedMs / 1000) <= 1.0, `decoded ${seconds} s, recorded ${recordedMs} ms`);
    await context.close();
  } finally {
    await proxy.close();
    await flaky.stop();
  }
});

test("a page reloaded in a dead spot loses nothing: the recording is resumed and finished", async () => {
  const proxyPort = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "kiroku-reload-"));
  const server = await startApp({
    KIROKU_STORAGE: "local",
    KIROKU_STORAGE_DIR: dir,
    KIROKU_PUBLIC_URL: `http://127.0.0.1:${proxyPort}`,
  });
  const proxy = await cuttingProxy(proxyPort, Number(new URL(server.base).port), Infinity);
  const base = `http://127.0.0.1:${proxyPort}`;
  const upload = (page, field) => page.getAttribute("#upload", `data-${field}`).then(Number);
  try {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
    const page = await context.newPage();
    await setUpUser(page, { ...server, base }, "rita", "en el camerino no hay cobertura");
    await page.goto(`${base}/record`);
    await page.waitForSelector("html[data-island-ready] #record-form");
    await page.fill("#title", "Camerino sin cobertura");
    await page.click("#record");
    await page.waitForSelector("#clock");
    await page.click("#camera-open");
    await page.waitForFunction(() => document.querySelector("#camera").videoWidth > 0);
    await page.waitForFunction(() => Number(document.querySelector("#upload").dataset.acked) >= 1,
      null, { timeout: 30_000 });

    // The network goes; two more chunks and a photo exist only in IndexedDB.
    proxy.setDown(true);
    await page.waitForFunction(() => Number(document.querySelector("#upload").dataset.produced) >= 3,
      null, { timeout: 40_000 });
    await takePhoto(page, 1);
    await wait(1_500);
    const produced = await upload(page, "produced");
    const acked = await upload(page, "acked");
    assert.ok(acked < produced, `${acked} of ${produced} acknowledged while offline`);
    assert.ok(proxy.stats.refused >= 1, "the proxy never refused an upload");

    // The tab is reloaded (the audio after the last chunk goes with it);
    // the network comes back.
    await page.reload();
    proxy.setDown(false);
    await page.waitForSelector("#interrupted a", { timeout: 20_000 });
    // The server lists it as still open too.
    assert.equal(await page.locator("#open-recordings a").count(), 1);
    await shot(page, "recording-interrupted");
    await page.click("#interrupted a");
    await page.waitForSelector("#resume");
    // What the device kept is read back before anything can be finished.
    const toSend = await page.waitForSelector("#resume-upload", { timeout: 20_000 });
    assert.ok(Number(await toSend.getAttribute("data-produced")) >= produced - acked,
      `${await toSend.getAttribute("data-produced")} chunks read back, ${produced - acked} unacknowledged`);
    assert.equal(Number(await toSend.getAttribute("data-photos-total")), 1);
    await page.waitForFunction(() => {
      const b = document.querySelector("#resume-finish");
      return b && !b.disabled;
    }, null, { timeout: 60_000 });
    await shot(page, "recording-resumed");
    await page.click("#resume-finish");
    await page.waitForFunction(() => document.querySelector("#project")?.dataset.status !== "recording",
      null, { timeout: 60_000 });

    const projectId = psql(server.env, "SELECT id FROM projects WHERE title = 'Camerino sin cobertura'");
    assert.equal(psql(server.env, `SELECT status FROM projects WHERE id = '${projectId}'`), "queued");
    const lastSeq = Number(psql(server.env, `SELECT last_seq FROM projects WHERE id = '${projectId}'`));
    const stored = Number(psql(server.env, `SELECT count(*) FROM chunks WHERE project_id = '${projectId}'`));
    assert.ok(lastSeq + 1 >= produced, `last_seq ${lastSeq}, ${produced} chunks were produced`);
    assert.equal(stored, lastSeq + 1, "a chunk is missing");
    const offsets = psql(server.env, `SELECT offset_ms FROM photos WHERE project_id = '${projectId}'`);
    assert.equal(offsets.split("\n").filter(Boolean).length, 1, "the photo taken offline was lost");
    assert.ok(Number(offsets) >= 20_000 && Number(offsets) <= (lastSeq + 1) * 10_000 + 2_000, offsets);
    // Nothing is left behind in the browser once the server has it all.
    const kept = await page.evaluate(() => new Promise((resolve, reject) => {
      const open = indexedDB.open("kiroku-uploads", 1);
      open.onsuccess = () => {
        const req = open.result.transaction("pending").objectStore("pending").count();
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      };
      open.onerror = () => reject(open.error);
    }));
    assert.equal(kept, 0, "pieces are still kept in IndexedDB");

    const userId = psql(server.env, "SELECT id FROM users WHERE username = 'rita'");
    const chunkDir = path.join(dir, "ingest", userId, projectId, "chunks");
    const files = readdirSync(chunkDir).sort();
    const joined = path.join(artifacts, "recording-reloaded.webm");
    writeFileSync(joined, Buffer.concat(files.map((c) => readFileSync(path.join(chunkDir, c)))));
    const seconds = decodedSeconds(joined);
    assert.ok(Math.abs(seconds - stored * 10) <= 1.5, `decoded ${seconds} s from ${stored} chunks`);
    await context.close();
  } finally {
    await proxy.close();
    await server.stop();
  }
});
