// A new user in a real headless Chromium: temporary password → key setup →
// session → sign out → sign in → password change, with every request
// recorded to prove that no password ever leaves the browser.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startApp, launch, recordRequests, shot } from "./harness.mjs";

let app;
let browser;

before(async () => {
  app = await startApp();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await app?.stop();
});

async function signIn(page, username, password) {
  await page.goto(`${app.base}/login`);
  await page.waitForSelector("html[data-island-ready] #login-form");
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click("#login-form button[type=submit]");
}

async function keyState(page) {
  return await page.evaluate(async () => {
    const db = await new Promise((ok, no) => {
      const r = indexedDB.open("kiroku", 1);
      r.onupgradeneeded = () => r.result.createObjectStore("keys");
      r.onsuccess = () => ok(r.result);
      r.onerror = () => no(r.error);
    });
    const key = await new Promise((ok, no) => {
      const r = db.transaction("keys").objectStore("keys").get("private");
      r.onsuccess = () => ok(r.result);
      r.onerror = () => no(r.error);
    });
    db.close();
    if (!key) return null;
    return { type: key.type, extractable: key.extractable, algorithm: key.algorithm.name, usages: key.usages };
  });
}

test("a new performer goes from temporary password to a working session, and no password is sent", async () => {
  const temp = app.addUser("ana");
  const first = "la carta elegida es el siete";
  const second = "otra función, otra contraseña 42";
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, locale: "es-ES" });
  const page = await context.newPage();
  const requests = recordRequests(page);

  await signIn(page, "ana", temp);
  await shot(page, "login");
  await page.waitForURL(/\/setup$/);
  await page.waitForSelector("#setup-form");
  await page.fill("#password", first);
  await page.fill("#repeat", first + "x");
  await page.click("#setup-form button[type=submit]");
  await page.waitForSelector("#status.error");
  assert.match(await page.textContent("#status"), /no coinciden/);
  await page.fill("#repeat", first);
  await shot(page, "key-setup");
  await page.click("#setup-form button[type=submit]");
  await page.waitForURL(/\/projects$/, { timeout: 60_000 });
  await page.waitForSelector(".key-state #status.ok");

  const held = await keyState(page);
  assert.deepEqual(held, { type: "private", extractable: false, algorithm: "RSA-OAEP", usages: ["decrypt"] });
  await shot(page, "projects");

  // Sign out wipes the key; signing in again brings it back.
  await page.click("form[data-island=logout] button");
  await page.waitForURL(/\/login$/);
  await page.waitForSelector("html[data-island-ready]");
  await page.waitForFunction(async () => (await indexedDB.databases()).every((d) => d.name !== "kiroku" ) || true);
  assert.equal(await keyState(page), null, "key survived sign-out");

  // The temporary password is spent.
  await signIn(page, "ana", temp);
  await page.waitForSelector("#status.error");
  assert.match(await page.textContent("#status"), /incorrectos/);

  await signIn(page, "ana", first);
  await page.waitForURL(/\/projects$/, { timeout: 60_000 });
  await page.waitForSelector(".key-state #status.ok");

  // Password change, then sign in with the new one.
  await page.goto(`${app.base}/account/password`);
  await page.waitForSelector("#password-form");
  await page.fill("#current", "not my password at all");
  await page.fill("#password", second);
  await page.fill("#repeat", second);
  await page.click("#password-form button[type=submit]");
  await page.waitForSelector("#status.error", { timeout: 60_000 });
  await page.fill("#current", first);
  await page.fill("#password", second);
  await page.fill("#repeat", second);
  await page.click("#password-form button[type=submit]");
  await page.waitForSelector("#status.ok", { timeout: 60_000 });
  await page.click("form[data-island=logout] button");
  await page.waitForURL(/\/login$/);
  await signIn(page, "ana", first);
  await page.waitForSelector("#status.error");
  await signIn(page, "ana", second);
  await page.waitForURL(/\/projects$/, { timeout: 60_000 });
  assert.equal((await keyState(page)).extractable, false);

  // Nothing the page sent carries any of the passwords.
  assert.ok(requests.length > 10, `only ${requests.length} requests recorded`);
  for (const secret of [temp, first, second]) {
    const enc = encodeURIComponent(secret);
    for (const r of requests) {
      for (const field of [r.url, r.headers, r.body]) {
        assert.ok(!field.includes(secret) && !field.includes(enc), `password sent in ${r.method} ${r.url}`);
      }
    }
  }
  // And the server logged none of them.
  const logText = app.logs.join("");
  for (const secret of [temp, first, second]) assert.ok(!logText.includes(secret));
  await context.close();
});

test("the page language follows the browser and the switch", async () => {
  const context = await browser.newContext({ locale: "en-US" });
  const page = await context.newPage();
  await page.goto(`${app.base}/login`);
  await page.waitForSelector("html[data-island-ready] #login-form");
  assert.equal(await page.getAttribute("html", "lang"), "en");
  assert.equal((await page.textContent("#login-form button")).trim(), "Sign in");
  await page.click("a.lang");
  await page.goto(`${app.base}/login`);
  await page.waitForSelector("html[data-island-ready] #login-form");
  assert.equal(await page.getAttribute("html", "lang"), "es");
  assert.equal((await page.textContent("#login-form button")).trim(), "Entrar");
  await context.close();
});
