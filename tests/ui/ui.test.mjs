// Drives smelt's chat page in headless Chromium: pick a model, chat with streaming, stop a reply.
// Expects SMELT_URL (a running server with the model SMELT_UI_MODEL in its store).
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const url = process.env.SMELT_URL;
const model = process.env.SMELT_UI_MODEL || "smollm2:latest";
assert.ok(url, "SMELT_URL is required");

async function metric(name) {
  const text = await (await fetch(url + "/metrics")).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return Number(line.split(" ")[1]);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
let failed = false;
try {
  const page = await browser.newPage();
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(url + "/ui");

  // The model list comes from /api/tags.
  await page.waitForFunction((m) => [...document.querySelectorAll("#model option")].some((o) => o.value === m), model, { timeout: 30000 });
  await page.selectOption("#model", model);
  // Short replies keep the test quick on the reference engine.
  await page.fill("#max-tokens", "12");

  // A streamed reply appears and finishes with its stats line.
  await page.fill("#input", "Say hello.");
  await page.click("#send");
  await page.waitForSelector(".msg.user", { timeout: 10000 });
  await page.waitForFunction(() => {
    const m = document.querySelector(".msg.assistant");
    return m && m.dataset.done === "true";
  }, null, { timeout: 240000 });
  const reply = await page.textContent(".msg.assistant .body");
  assert.ok(reply && reply.trim().length > 0, "the assistant replied");
  assert.ok(!(await page.$(".msg.assistant.error")), "no error: " + reply);
  const stats = await page.textContent(".msg.assistant .stats");
  assert.match(stats, /tokens .* tok\/s/);

  // Stop a long reply once it has started streaming.
  await page.fill("#max-tokens", "");
  const cancelledBefore = await metric("smelt_cancelled_requests_total");
  await page.fill("#input", "Write a very long story about a dragon.");
  await page.click("#send");
  await page.waitForFunction(() => {
    const all = document.querySelectorAll(".msg.assistant .body");
    return all.length === 2 && all[1].textContent.length > 0;
  }, null, { timeout: 240000 });
  assert.equal(await page.isEnabled("#stop"), true);
  await page.click("#stop");
  await page.waitForFunction(() => document.querySelectorAll(".msg.assistant")[1].dataset.stopped === "true", null, { timeout: 10000 });
  assert.equal(await page.isEnabled("#send"), true, "ready for the next message");
  // The server noticed the dropped stream and cancelled the generation.
  const deadline = Date.now() + 30000;
  while ((await metric("smelt_cancelled_requests_total")) <= cancelledBefore && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.ok((await metric("smelt_cancelled_requests_total")) > cancelledBefore, "generation cancelled");
  assert.deepEqual(consoleErrors, []);
  console.log("ui test passed");
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
