// Opens a serial-only vmgate ticket URL (the xterm.js console page) in
// Debian's headless Chromium (playwright-core), types into the terminal,
// and reports what the page did as one JSON line on stdout. Driven by
// crates/vmgate/tests/serial.rs.
//
// Environment:
//   VMGATE_URL     the ticket URL (…/console#ticket=…)
//   VMGATE_TYPE    text to type into the terminal, then Enter
//   VMGATE_EXPECT  text to wait for in the terminal afterwards (optional;
//                  without it the script waits 2 s for anything to leave)
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const deadline = Date.now() + 60_000;
const profile = mkdtempSync(join(tmpdir(), "vmgate-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  ignoreHTTPSErrors: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
// What the page sent on its WebSockets, as the browser saw it: binary
// frames are console input, text frames control messages.
const result = { console: [], sentBinary: 0, sentBinaryBytes: 0, sentText: [] };
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => result.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  cdp.on("Network.webSocketFrameSent", (e) => {
    if (e.response.opcode === 2) {
      result.sentBinary += 1;
      // Base64 payload: its decoded length.
      result.sentBinaryBytes += Buffer.from(e.response.payloadData, "base64").length;
    } else if (e.response.opcode === 1) {
      result.sentText.push(e.response.payloadData);
    }
  });
  await page.goto(process.env.VMGATE_URL);
  const until = async (what, fn, arg) => {
    while (!(await page.evaluate(fn, arg))) {
      if (Date.now() > deadline) {
        const status = await page.evaluate(() => document.getElementById("status")?.textContent);
        throw new Error(`timed out waiting for ${what}; status: ${status}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const termText = () => page.evaluate(() => {
    const b = window.vmgateTerm.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
    return lines.join("\n");
  });
  await until("the console to connect", () => {
    const s = document.getElementById("status").dataset.state;
    return s === "connected" || s === "read-only";
  });
  // The agent's greeting tells which session this is.
  await until("the agent's notice", () => document.getElementById("notice").textContent !== "");
  result.state = await page.evaluate(() => document.getElementById("status").dataset.state);
  result.status = await page.evaluate(() => document.getElementById("status").textContent);
  result.notice = await page.evaluate(() => document.getElementById("notice").textContent);
  // Where the page is now, and every entry of the tab's history.
  result.location = await page.evaluate(() => location.href);
  result.history = (await cdp.send("Page.getNavigationHistory")).entries.map((e) => e.url);
  // Typed as a person would: focus the terminal, then keys.
  await page.click("#terminal");
  await page.keyboard.type(process.env.VMGATE_TYPE, { delay: 20 });
  await page.keyboard.press("Enter");
  if (process.env.VMGATE_EXPECT) {
    const want = process.env.VMGATE_EXPECT;
    while (!(await termText()).includes(want)) {
      if (Date.now() > deadline) throw new Error(`no ${want} in the terminal`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } else {
    await new Promise((r) => setTimeout(r, 2000));
  }
  result.terminal = await termText();
  result.ok = true;
} catch (e) {
  result.ok = false;
  result.error = String((e && e.stack) || e);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result) + "\n");
