// Keeps a vmgate screen page open in Debian's headless Chromium
// (playwright-core) while the test live-migrates the guest, and answers
// the test's commands on stdin, one JSON line on stdout each. Driven by
// crates/vmgate/tests/libvirt.rs.
//
// Environment: VMGATE_URL (the ticket URL), VMGATE_OUT (a folder).
// Commands:
//   grab  the canvas once two looks agree: writes VMGATE_OUT/canvas.rgba,
//         answers {width, height, closes, status}
//   quit  answers {closes, statuses, console} and exits
// `closes` counts WebSocket closes the browser saw (DevTools'
// Network.webSocketClosed), `statuses` every screen status the page had.
import { chromium } from "playwright-core";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const url = process.env.VMGATE_URL;
const out = process.env.VMGATE_OUT;
const profile = mkdtempSync(join(tmpdir(), "vmgate-chromium-"));
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");

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
const console_ = [];
let closes = 0;
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  cdp.on("Network.webSocketClosed", () => closes++);
  await page.goto(url);
  // Every status the screen goes through, recorded by the page itself.
  await page.evaluate(() => {
    window.__statuses = [];
    setInterval(() => {
      const s = window.vmgate && window.vmgate.screen;
      if (s && window.__statuses[window.__statuses.length - 1] !== s) window.__statuses.push(s);
    }, 50);
  });
  const deadline = Date.now() + 60_000;
  while (!(await page.evaluate(() => window.vmgate && window.vmgate.screen === "connected"))) {
    if (Date.now() > deadline) throw new Error("the screen never connected");
    await new Promise((r) => setTimeout(r, 200));
  }
  say({ ready: true });
  const grab = () => page.evaluate(() => {
    const c = document.querySelector("#screen canvas");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let s = "";
    for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
    return { width: c.width, height: c.height, rgba: s };
  });
  for await (const line of createInterface({ input: process.stdin })) {
    if (line === "grab") {
      let prev = await grab();
      for (;;) {
        await new Promise((r) => setTimeout(r, 300));
        const g = await grab();
        if (g.rgba === prev.rgba) break;
        prev = g;
      }
      writeFileSync(join(out, "canvas.rgba"), Buffer.from(prev.rgba, "latin1"));
      const status = await page.evaluate(() => window.vmgate.screen);
      say({ width: prev.width, height: prev.height, closes, status });
    } else if (line === "quit") {
      const statuses = await page.evaluate(() => window.__statuses);
      say({ closes, statuses, console: console_ });
      break;
    }
  }
} catch (e) {
  say({ error: String((e && e.stack) || e), console: console_ });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
