// Reading a finished script: the island fetches sealed artifacts through the
// real export service, opens them with the key it holds, shows the HTML in
// a sandboxed frame and downloads the exact plaintext bytes.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { tmpdir } from "node:os";
import path from "node:path";
import { startApp, startExport, launch, setUpUser, seal, psql, freePort, shot } from "./harness.mjs";

let app;
let exporter;
let browser;
const storage = mkdtempSync(path.join(tmpdir(), "kiroku-read-"));

before(async () => {
  const exportPort = await freePort();
  app = await startApp({
    KIROKU_STORAGE: "local",
    KIROKU_STORAGE_DIR: storage,
    KIROKU_EXPORT_PUBLIC_URL: `http://127.0.0.1:${exportPort}`,
  });
  exporter = await startExport(app.env, exportPort);
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await exporter?.stop();
  await app?.stop();
});

const HTML = `<!doctype html><html><head><meta charset="utf-8"><title>Guion</title></head><body>
<h1>La carta elegida</h1><p>Señora de la bufanda roja: piense en un número.</p>
<script>parent.document.title = "pwned"; document.body.dataset.ran = "yes";</script>
<img src="http://203.0.113.9/leak.png" alt="">
</body></html>`;
const FILES = {
  html: { type: "text/html", name: "guion.html", bytes: Buffer.from(HTML) },
  md: { type: "text/markdown", name: "guion.md", bytes: Buffer.from("# La carta elegida\n\nSeñora de la bufanda roja: piense en un número.\n") },
  pdf: { type: "application/pdf", name: "guion.pdf", bytes: Buffer.concat([Buffer.from("%PDF-1.7\n"), Buffer.alloc(300_000, 7)]) },
  docx: {
    type: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    name: "guion.docx",
    bytes: Buffer.concat([Buffer.from("PK\x03\x04"), Buffer.alloc(5000, 1)]),
  },
};

async function finishedProject(username) {
  const userId = psql(app.env, `SELECT id FROM users WHERE username = '${username}'`);
  const spki = Buffer.from(psql(app.env, `SELECT encode(public_key, 'hex') FROM user_public_keys WHERE user_id = '${userId}'`), "hex");
  const projectId = randomUUID();
  psql(app.env, `INSERT INTO projects (id, user_id, title, participant, status, duration_ms)
                 VALUES ('${projectId}', '${userId}', 'Rutina terminada', 'Ana', 'ready', 53000)`);
  const ids = {};
  for (const [kind, f] of Object.entries(FILES)) {
    const id = randomUUID();
    ids[kind] = id;
    const sealed = await seal(spki, id, kind, f.bytes);
    const key = `final/v1/${userId}/${projectId}/${id}`;
    mkdirSync(path.dirname(path.join(storage, key)), { recursive: true });
    writeFileSync(path.join(storage, key), sealed.object);
    psql(app.env, `INSERT INTO artifacts (id, project_id, kind, content_type, file_name, object_key, size, sha256, dek_enc, algorithm)
      VALUES ('${id}', '${projectId}', '${kind}', '${f.type}', '${f.name}', '${key}', ${sealed.object.length},
              decode('${sealed.sha.toString("hex")}', 'hex'), decode('${sealed.dekEnc.toString("hex")}', 'hex'), 'A256GCM+RSA-OAEP-256')`);
  }
  return { userId, projectId, ids };
}

test("the performer reads the script in the page and downloads the exact files", async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, acceptDownloads: true, locale: "es-ES" });
  const page = await context.newPage();
  const external = [];
  // A request the page's CSP blocks may still be announced; what must never
  // happen is an answer from outside.
  page.on("requestfinished", (r) => { if (r.url().includes("203.0.113.9")) external.push(r.url()); });
  await setUpUser(page, app, "ana", "la bufanda roja es la clave");
  const { projectId, userId, ids } = await finishedProject("ana");

  await page.goto(`${app.base}/projects`);
  await page.click(`a[href="/projects/${projectId}"]`);
  const frame = page.frameLocator("#preview");
  await frame.locator("h1").waitFor({ timeout: 30_000 });
  assert.equal(await frame.locator("h1").textContent(), "La carta elegida", "preview heading");
  assert.notEqual(await page.title(), "pwned", "a script in the preview changed the page");
  assert.equal(await frame.locator("body").getAttribute("data-ran"), null, "a script ran in the preview");
  assert.equal(await page.getAttribute("#preview", "sandbox"), "", "the preview frame must be fully sandboxed");
  assert.deepEqual(external, [], "the preview loaded something external");
  await shot(page, "script-preview");

  for (const kind of ["pdf", "docx", "md"]) {
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.click(`button.download[data-kind="${kind}"]`),
    ]);
    assert.equal(download.suggestedFilename(), FILES[kind].name, `${kind} file name`);
    const saved = await download.path();
    assert.ok(Buffer.compare(readFileSync(saved), FILES[kind].bytes) === 0, `${kind} bytes differ`);
  }

  // One flipped bit in the stored object: a clear message, no download.
  const mdPath = path.join(storage, "final", "v1", userId, projectId, ids.md);
  const tampered = readFileSync(mdPath);
  tampered[40] ^= 1;
  writeFileSync(mdPath, tampered);
  let downloaded = false;
  page.on("download", () => { downloaded = true; });
  await page.click('button.download[data-kind="md"]');
  await page.waitForSelector("#read-status.error");
  assert.match(await page.textContent("#read-status"), /no se pudo verificar/);
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(downloaded, false, "a tampered file was downloaded");
  await context.close();
});

test("without the key in this browser the script does not open", async () => {
  const context = await browser.newContext({ locale: "es-ES" });
  const page = await context.newPage();
  await setUpUser(page, app, "bea", "otra contraseña muy larga");
  const { projectId } = await finishedProject("bea");
  await page.evaluate(() => new Promise((r) => { const q = indexedDB.deleteDatabase("kiroku"); q.onsuccess = q.onerror = r; }));
  await page.goto(`${app.base}/projects/${projectId}`);
  await page.waitForSelector("#read-status.error", { timeout: 30_000 });
  assert.match(await page.textContent("#read-status"), /no tiene tu clave/);
  assert.equal(await page.$("#preview"), null, "a preview appeared without the key");
  await context.close();
});
