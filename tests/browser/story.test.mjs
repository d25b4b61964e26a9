// The whole story in a real browser on real services: the operator creates
// a performer, who sets up keys, records the Spanish routine with three
// photos (one during a pause), stops, watches it process with the offline
// engine, reads the script in the page and downloads it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync, spawnSync } from "node:child_process";
import { promisify } from "node:util";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  startApp, startExport, startWorker, launchWithMedia, signIn, shot, fixtures, freePort, psql, bin, root,
} from "./harness.mjs";

let app;
let exporter;
let worker;
let browser;
let story; // what the story leaves for the insider drill
const execFileAsync = promisify(execFile);

before(async () => {
  const exportPort = await freePort();
  // Debug logs: the insider drill afterwards reads all the app printed.
  app = await startApp({ KIROKU_EXPORT_PUBLIC_URL: `http://127.0.0.1:${exportPort}`, KIROKU_LOG: "debug" });
  exporter = await startExport(app.env, exportPort);
  worker = await startWorker(app.env);
  browser = await launchWithMedia(path.join(fixtures, "routine-es.wav"));
});

after(async () => {
  await browser?.close();
  await worker?.stop();
  // The worker's log, for whoever reads a failed run (it holds no script text).
  if (worker) writeFileSync(path.join(root, "tests", "artifacts", "story-worker.log"), worker.logs.join(""));
  if (app) writeFileSync(path.join(root, "tests", "artifacts", "story-app.log"), app.logs.join(""));
  await exporter?.stop();
  await app?.stop();
});

const wait = (ms) => new Promise((r) => setTimeout(r, ms));

/** Lowercase words without accents or punctuation. */
function words(text) {
  return text.toLowerCase().normalize("NFD").replace(/[\u0300-\u036f]/g, "").match(/[a-z0-9ñ]+/g) ?? [];
}

/** Key words of the routine's sentences, in the order they are spoken. */
const KEYS = [
  "noches", "publico", "señora", "numero", "prediccion", "mesa", "pizarra", "cifra",
  "pequeña", "grande", "gracias",
];

/**
 * The routine's sentences with the times they are spoken in the fixture:
 * the recording has exactly one stretch of speech per sentence, found by
 * ffmpeg's silence detector. Each sentence also gets its distinctive words
 * (found in no other sentence, nor in the title), to find it in a
 * transcript with recognition errors.
 */
function timedSentences(titleWords) {
  const text = readFileSync(path.join(fixtures, "routine-es.txt"), "utf8");
  const sentences = text.match(/[^.?!]+[.?!]/g).map((s) => s.trim());
  const probe = spawnSync("ffmpeg", [
    "-hide_banner", "-i", path.join(fixtures, "routine-es.wav"), "-af", "silencedetect=n=-35dB:d=0.3", "-f", "null", "-",
  ], { encoding: "utf8" });
  const starts = [...probe.stderr.matchAll(/silence_start: ([\d.]+)/g)].map((m) => Number(m[1]));
  const ends = [...probe.stderr.matchAll(/silence_end: ([\d.]+)/g)].map((m) => Number(m[1]));
  // Speech runs from the end of one silence to the start of the next.
  const spans = [];
  let from = 0;
  for (let i = 0; i < starts.length; i++) {
    if (starts[i] - from > 0.2) spans.push([from, starts[i]]);
    from = ends[i] ?? Infinity;
  }
  assert.equal(spans.length, sentences.length, `speech spans ${JSON.stringify(spans)} vs ${sentences.length} sentences`);
  const counts = new Map();
  for (const s of sentences) for (const w of new Set(words(s))) counts.set(w, (counts.get(w) ?? 0) + 1);
  return sentences.map((s, i) => ({
    text: s,
    start: spans[i][0],
    end: spans[i][1],
    keys: [...new Set(words(s))].filter((w) => w.length >= 4 && counts.get(w) === 1 && !titleWords.includes(w)),
  }));
}

/**
 * Checks that photo `n` sits after the sentence spoken at fixture time `t`
 * seconds and before the third one after it (a photo follows the whole
 * transcript line it was taken in, and the recogniser may put up to three
 * sentences into one line). Near a
 * sentence's start the previous sentence is also accepted.
 */
function photoPlacement(bodyWords, sentences, n, t) {
  const at = bodyWords.findIndex((w, i) => w === "foto" && bodyWords[i + 1] === String(n));
  assert.ok(at >= 0, `photo ${n} is not in the script`);
  let s = sentences.findLastIndex((x) => x.start <= t);
  if (s < 0) s = 0;
  const earliest = t - sentences[s].start < 1.0 && s > 0 ? s - 1 : s;
  const before = bodyWords.slice(0, at);
  const after = bodyWords.slice(at);
  // Some sentence from `earliest` on was transcribed before the photo...
  const spokenBefore = sentences.slice(earliest, s + 1).some((x) => x.keys.some((k) => before.includes(k)));
  assert.ok(spokenBefore, `photo ${n} (at ${t.toFixed(1)} s) comes before «${sentences[s].text}»`);
  // ...and the third sentence after comes after it, where it has words of its own.
  const later = sentences[s + 3];
  if (later && later.keys.some((k) => bodyWords.includes(k))) {
    assert.ok(later.keys.some((k) => after.includes(k)), `photo ${n} (at ${t.toFixed(1)} s) comes after «${later.text}»`);
  }
  return { photo: n, at: t, sentence: sentences[s].text };
}

/** Finds the key words in order; a word not found is skipped (recognition errors). */
function inOrder(text) {
  const w = words(text);
  const found = [];
  let from = 0;
  for (const k of KEYS) {
    const at = w.indexOf(k.normalize("NFD").replace(/[\u0300-\u036f]/g, ""), from);
    if (at >= 0) {
      found.push(k);
      from = at + 1;
    }
  }
  return found;
}

test("from temporary password to a downloaded script, offline", async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, locale: "es-ES", acceptDownloads: true });
  const page = await context.newPage();
  // Page errors go to the test's output: a failure should say why.
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") console.log(`[page ${m.type()}] ${m.text()}`); });
  page.on("pageerror", (e) => console.log(`[page exception] ${e.message}`));
  const temp = app.addUser("ana");
  const password = "la bufanda roja esconde el treinta y siete";

  await signIn(page, app.base, "ana", temp);
  await page.waitForURL(/\/setup$/);
  await page.waitForSelector("#setup-form");
  await page.fill("#password", password);
  await page.fill("#repeat", password);
  await shot(page, "story-key-setup");
  await page.click("#setup-form button[type=submit]");
  await page.waitForURL(/\/projects$/, { timeout: 60_000 });

  // The recording-time offset of each photo, as the island sends it.
  const photoOffsets = new Map();
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (u.pathname === "/api/photo") photoOffsets.set(u.searchParams.get("photo_id"), Number(u.searchParams.get("offset_ms")));
  });
  await page.click("#new-recording");
  await page.waitForSelector("html[data-island-ready] #record-form");
  await page.fill("#title", "El número de la bufanda");
  await page.fill("#participant", "Ana");
  await page.selectOption("#language", "es");
  await page.click("#record");
  await page.waitForSelector("#clock");
  await page.click("#camera-open");
  await page.waitForFunction(() => document.querySelector("#camera").videoWidth > 0);
  await wait(9_000);
  await page.click("#photo");
  await wait(14_000);
  const pausedAt = Date.now();
  await page.click("#pause");
  await page.waitForSelector("#clock.paused");
  await page.click("#photo");
  await wait(3_000);
  await page.click("#pause");
  const pausedMs = Date.now() - pausedAt;
  await wait(14_000);
  await page.click("#photo");
  await page.waitForFunction(() => document.querySelectorAll("#thumbs img").length === 3);
  await shot(page, "story-recording");
  await wait(17_000);
  await page.click("#stop");
  await page.waitForSelector("#stop-dialog");
  await page.click("#finish");
  await page.waitForURL(/\/projects$/, { timeout: 90_000 });

  // Processing, watched live on the project page.
  const projectId = psql(app.env, "SELECT id FROM projects WHERE title = 'El número de la bufanda'");
  await page.click(`a[href="/projects/${projectId}"]`);
  await page.waitForSelector("#progress");
  await shot(page, "story-progress");
  await page.waitForSelector("#preview", { timeout: Number(process.env.STORY_TIMEOUT_MS ?? 300_000) });
  const frame = page.frameLocator("#preview");
  await frame.locator("h1").waitFor();
  // The script's own stylesheet applies in the frame (the page's CSP allows
  // exactly it, by hash): a serif body, photos no wider than the text.
  const font = await frame.locator("body").evaluate((b) => getComputedStyle(b).fontFamily);
  assert.match(font, /Georgia/, `the script's stylesheet was blocked (font ${font})`);
  const html = await frame.locator("body").innerHTML();
  const text = await frame.locator("body").innerText();
  await shot(page, "story-script");
  // The sandboxed frame is blank in a full-page capture; capture it alone.
  await page.locator("#preview").screenshot({ path: path.join(root, "tests", "artifacts", "story-script-preview.png") });

  const found = inOrder(text);
  assert.ok(found.length >= 9, `only ${found.length} key words in order: ${found}\n${text}`);

  // Three photos, each after some speech, in the order they were taken.
  const figures = [...html.matchAll(/<figure/g)].map((m) => m.index);
  assert.equal(figures.length, 3, "three photos in the script");
  const firstParagraph = html.indexOf("<p>");
  assert.ok(firstParagraph >= 0 && figures[0] > firstParagraph, "the first photo comes after the first words");
  // Each photo after the sentence being spoken when it was taken. Fixture
  // time is recording time, plus the pause for photos taken after it (the
  // fake microphone plays on while the recorder is paused).
  const offsets = [...photoOffsets.values()].sort((a, b) => a - b);
  assert.equal(offsets.length, 3, `photo offsets seen: ${offsets}`);
  const lines = text.split("\n");
  const metaEnd = lines.findIndex((l) => /Duración/.test(l));
  assert.ok(metaEnd >= 0, `no meta line in: ${text.slice(0, 300)}`);
  const bodyWords = words(lines.slice(metaEnd + 1).join(" "));
  const sentences = timedSentences(words("El número de la bufanda Ana"));
  const placed = offsets.map((ms, i) =>
    photoPlacement(bodyWords, sentences, i + 1, (ms + (i === 2 ? pausedMs : 0)) / 1000));
  console.log(`photos placed: ${JSON.stringify(placed)}`);

  // Downloads open as what they claim to be, and the Markdown says what the HTML says.
  const files = {};
  for (const kind of ["pdf", "docx", "md"]) {
    const [download] = await Promise.all([page.waitForEvent("download"), page.click(`button.download[data-kind="${kind}"]`)]);
    files[kind] = readFileSync(await download.path());
  }
  const dir = mkdtempSync(path.join(tmpdir(), "kiroku-story-"));
  writeFileSync(path.join(dir, "guion.pdf"), files.pdf);
  const pdfText = execFileSync("pdftotext", ["-raw", path.join(dir, "guion.pdf"), "-"]).toString();
  assert.ok(inOrder(pdfText).length >= 9, `the PDF lacks the routine: ${inOrder(pdfText)}`);
  // The DOCX opens in an ordinary word processor: LibreOffice converts it.
  writeFileSync(path.join(dir, "guion.docx"), files.docx);
  execFileSync("soffice", ["--headless", "--convert-to", "pdf", "--outdir", path.join(dir, "lo"), path.join(dir, "guion.docx")], {
    stdio: "ignore",
    timeout: 120_000,
    env: { ...process.env, HOME: dir },
  });
  const docxText = execFileSync("pdftotext", ["-raw", path.join(dir, "lo", "guion.pdf"), "-"]).toString();
  assert.ok(inOrder(docxText).length >= 9, `the DOCX lacks the routine: ${inOrder(docxText)}`);
  const md = files.md.toString("utf8").replace(/!\[[^\]]*\]\(data:[^)]*\)/g, "").replace(/\\(.)/g, "$1");
  const body = md.split("\n").filter((l) => l && !l.startsWith("#") && !l.startsWith("**")).join(" ");
  const htmlWords = words(text.split("\n").filter((l) => !/^(Foto \d|Participante|Fecha|Duración)/.test(l)).slice(1).join(" "));
  assert.deepEqual(words(body), htmlWords, "the Markdown's text differs from the HTML's");

  assert.equal(psql(app.env, `SELECT count(*) FROM chunks WHERE project_id = '${projectId}'`), "0");
  assert.equal(psql(app.env, `SELECT status FROM projects WHERE id = '${projectId}'`), "ready");
  // The session cookie must never appear in what the app logged.
  const cookies = (await context.cookies()).map((c) => c.value).filter((v) => v.length >= 16);
  await context.close();
  story = { username: "ana", password, temp, cookies };
});

// Right after the story, with only what the app holds: its configuration
// (the environment it ran with), its database role, its Redis, its S3 key,
// everything it logged, and tokens its signing key can mint.
test("the insider drill finds neither the routine nor a key", async (t) => {
  if (!story) return t.skip("the story did not finish");
  const dir = mkdtempSync(path.join(tmpdir(), "kiroku-drill-"));
  const logs = path.join(dir, "app.log");
  writeFileSync(logs, app.logs.join(""));
  assert.match(app.logs.join(""), /recording stopped and queued/, "the app's logs were not captured");
  // Asynchronously: the app and the export service are this process's
  // children, and a blocked event loop stops draining their log pipes (the
  // export service then stalls on a log line, and the drill on it).
  let out;
  try {
    ({ stdout: out } = await execFileAsync(bin("insider_drill"), [
    "--logs", logs, "--sentences", path.join(fixtures, "routine-es.txt"), "--username", story.username,
  ], {
    env: { ...app.env, KIROKU_LOG: "info", KIROKU_DRILL_PASSWORD: story.password, KIROKU_DRILL_SECRETS: [story.temp, ...story.cookies].join("\n") },
    encoding: "utf8",
    timeout: 300_000,
    maxBuffer: 64 * 1024 * 1024,
  }));
  } catch (e) {
    console.log(`insider drill failed; its log:\n${e.stderr}`);
    throw e;
  }
  console.log(out.trim());
  assert.match(out, /insider drill passed: .* 4 artifacts/);
});
