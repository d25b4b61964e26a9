// The whole story in a real browser on real services: the operator creates
// a performer, who sets up keys, records the Spanish routine with three
// photos (one during a pause), stops, watches it process with the offline
// engine, reads the script in the page and downloads it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  startApp, startExport, startWorker, launchWithMedia, signIn, shot, fixtures, freePort, psql,
} from "./harness.mjs";

let app;
let exporter;
let worker;
let browser;

before(async () => {
  const exportPort = await freePort();
  app = await startApp({ KIROKU_EXPORT_PUBLIC_URL: `http://127.0.0.1:${exportPort}` });
  exporter = await startExport(app.env, exportPort);
  worker = await startWorker(app.env);
  browser = await launchWithMedia(path.join(fixtures, "routine-es.wav"));
});

after(async () => {
  await browser?.close();
  await worker?.stop();
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
  await page.click("#pause");
  await page.waitForSelector("#clock.paused");
  await page.click("#photo");
  await wait(3_000);
  await page.click("#pause");
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
  await page.waitForSelector("#preview", { timeout: 300_000 });
  const frame = page.frameLocator("#preview");
  await frame.locator("h1").waitFor();
  const html = await frame.locator("body").innerHTML();
  const text = await frame.locator("body").innerText();
  await shot(page, "story-script");

  const found = inOrder(text);
  assert.ok(found.length >= 9, `only ${found.length} key words in order: ${found}\n${text}`);

  // Three photos, each after some speech, in the order they were taken.
  const figures = [...html.matchAll(/<figure/g)].map((m) => m.index);
  assert.equal(figures.length, 3, "three photos in the script");
  const firstParagraph = html.indexOf("<p>");
  assert.ok(firstParagraph >= 0 && figures[0] > firstParagraph, "the first photo comes after the first words");

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
  await context.close();
});
