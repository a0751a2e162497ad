// The screen page's virtual media in Debian's headless Chromium
// (playwright-core): opens a ticket URL naming vnc and media,
// picks the ISO in MEDIA_ISO with the file input (setInputFiles), waits
// until the page says the guest's drive holds it, says "vmgate-media:
// inserted" on stderr (the test then reads it in the guest), waits for a
// line on stdin, clicks Eject, waits until the page says ejected, and
// reports as one JSON line on stdout what the page showed and counted.
// Driven by crates/vmgate/tests/media.rs.
//
// Environment: VMGATE_URL (the ticket URL), MEDIA_ISO (a file path).
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const deadline = Date.now() + 120_000;
const profile = mkdtempSync(join(tmpdir(), "vmgate-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  ignoreHTTPSErrors: true,
  viewport: { width: 1400, height: 700 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const result = { console: [] };
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => result.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
  await page.goto(process.env.VMGATE_URL);
  const until = async (what, fn) => {
    while (!(await page.evaluate(fn))) {
      if (Date.now() > deadline) {
        const m = await page.evaluate(() => JSON.stringify(window.vmgate && window.vmgate.media));
        throw new Error(`timed out waiting for ${what}; media: ${m}`);
      }
      await sleep(100);
    }
  };
  const status = () => page.evaluate(() => document.getElementById("media-status").textContent);
  // Whether closing the tab now would ask first.
  const warnsOnUnload = () => page.evaluate(() => {
    const e = new Event("beforeunload", { cancelable: true });
    window.dispatchEvent(e);
    return e.defaultPrevented;
  });
  await until("the screen to connect", () => window.vmgate && window.vmgate.screen === "connected");
  await until("the media socket", () => window.vmgate.media && window.vmgate.media.state === "idle");
  result.idle = await status();
  result.warnsWhenIdle = await warnsOnUnload();
  const picked = Date.now();
  await page.setInputFiles("#media-file", process.env.MEDIA_ISO);
  await until("the medium in the drive", () => window.vmgate.media.state === "inserted");
  result.insertedMs = Date.now() - picked;
  result.inserted = await status();
  result.warnsWhenInserted = await warnsOnUnload();
  process.stderr.write("vmgate-media: inserted\n");
  await lines.next();
  result.served = await page.evaluate(() => ({ bytesRead: window.vmgate.media.bytesRead, reads: window.vmgate.media.reads }));
  result.whileServing = await status();
  await page.click("#media-eject");
  await until("the eject", () => window.vmgate.media.state === "ejected");
  result.ejected = await status();
  result.media = await page.evaluate(() => window.vmgate.media);
  result.warnsAfterEject = await warnsOnUnload();
  result.pickable = await page.evaluate(() => !document.getElementById("media-file").disabled);
  result.ok = true;
} catch (e) {
  result.ok = false;
  result.error = String((e && e.stack) || e);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(0);
