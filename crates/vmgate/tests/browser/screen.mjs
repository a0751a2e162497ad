// Opens a vmgate ticket URL in Debian's headless Chromium (playwright-core,
// no browser download) and reports what the page did, as one JSON line on
// stdout. Driven by crates/vmgate/tests/vnc.rs.
//
// Environment:
//   VMGATE_URL    the ticket URL (…/console#ticket=…)
//   VMGATE_OUT    a folder for canvas.rgba and page.png
//   VMGATE_TYPE   text to type into the screen once it shows (optional)
//   VMGATE_CLICK  "1": also click into the screen (optional)
//   VMGATE_TYPE_BUTTON  text to type with the page's Type button, then
//                 Enter on the keyboard (optional)
//   VMGATE_UNTIL_CLOSED  "1": then wait for the screen to disconnect and
//                 report the status line (optional)
//   VMGATE_HTTP1  "1": no HTTP/2, so each WebSocket takes a TCP connection
//                 of its own (behind a load balancer: another gateway)
import { chromium } from "playwright-core";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

// Playwright's keyboard.type() sends "$" as Digit4 without Shift, and the
// guest, which gets scancodes (QEMU extended key events), would see "4".
// A person holds Shift: so does this, on a US layout.
const SHIFTED = {
  "!": "Digit1", "@": "Digit2", "#": "Digit3", "$": "Digit4", "%": "Digit5", "^": "Digit6",
  "&": "Digit7", "*": "Digit8", "(": "Digit9", ")": "Digit0", "_": "Minus", "+": "Equal",
  "{": "BracketLeft", "}": "BracketRight", "|": "Backslash", ":": "Semicolon", '"': "Quote",
  "<": "Comma", ">": "Period", "?": "Slash", "~": "Backquote",
};
async function typeLikeAPerson(page, text) {
  for (const ch of text) {
    const code = SHIFTED[ch] || (/[A-Z]/.test(ch) ? `Key${ch}` : null);
    if (code) {
      await page.keyboard.down("Shift");
      await page.keyboard.press(code);
      await page.keyboard.up("Shift");
    } else {
      await page.keyboard.press(ch === " " ? "Space" : ch);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

const url = process.env.VMGATE_URL;
const out = process.env.VMGATE_OUT;
const deadline = Date.now() + 60_000;
const profile = mkdtempSync(join(tmpdir(), "vmgate-chromium-"));

// A fresh profile (playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  ignoreHTTPSErrors: true,
  viewport: { width: 1400, height: 700 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ...(process.env.VMGATE_HTTP1 === "1" ? ["--disable-http2"] : []),
  ],
});
const result = { websockets: {}, documentProtocol: null, console: [] };
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => result.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
  page.on("response", (r) => r.status() >= 400 && result.console.push(`HTTP ${r.status()} ${r.url()}`));
  // The browser's own record of each WebSocket handshake: over HTTP/2 an
  // extended CONNECT is answered 200, over HTTP/1.1 an upgrade is 101.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const wsUrls = {};
  cdp.on("Network.webSocketCreated", (e) => (wsUrls[e.requestId] = e.url));
  cdp.on("Network.webSocketHandshakeResponseReceived", (e) => {
    const u = new URL(wsUrls[e.requestId]);
    result.websockets[u.pathname] = { status: e.response.status };
  });
  // Everything the browser sent a server: each request's URL (without
  // its fragment: what goes on the wire) and headers, and each WebSocket
  // handshake's.
  result.sent = [];
  cdp.on("Network.requestWillBeSent", (e) => {
    result.sent.push(e.request.url, JSON.stringify(e.request.headers));
    if (e.request.postData) result.sent.push(`body of ${e.request.url}`);
  });
  cdp.on("Network.webSocketWillSendHandshakeRequest", (e) => {
    result.sent.push(wsUrls[e.requestId] || "", JSON.stringify(e.request.headers));
  });
  cdp.on("Network.responseReceived", (e) => {
    if (e.type === "Document" && e.response.url.includes("/screen")) result.documentProtocol = e.response.protocol;
  });
  await page.goto(url);
  const until = async (what, fn) => {
    while (!(await page.evaluate(fn))) {
      if (Date.now() > deadline) {
        const status = await page.evaluate(() => document.getElementById("status")?.textContent);
        throw new Error(`timed out waiting for ${what}; status: ${status}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  await until("the screen to connect", () => window.vmgate && window.vmgate.screen === "connected");
  result.serial = await page.evaluate(() => !!document.getElementById("serial") && !document.getElementById("serial").hidden);
  if (result.serial) await until("the serial console to connect", () => window.vmgate.serial === "connected");
  // The canvas holds the framebuffer at its own size, whatever the scaling.
  const grab = () => page.evaluate(() => {
    const c = document.querySelector("#screen canvas");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let s = "";
    for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
    return { width: c.width, height: c.height, rgba: btoa(s) };
  });
  // Wait for a drawn (not all black) frame that two looks agree on.
  let prev = null;
  for (;;) {
    const g = await grab();
    const bytes = Buffer.from(g.rgba, "base64");
    const drawn = bytes.some((b, i) => i % 4 !== 3 && b !== 0);
    if (drawn && prev && prev.rgba === g.rgba) {
      result.width = g.width;
      result.height = g.height;
      writeFileSync(join(out, "canvas.rgba"), bytes);
      break;
    }
    prev = g;
    if (Date.now() > deadline) throw new Error("the canvas never showed a stable frame");
    await new Promise((r) => setTimeout(r, 500));
  }
  result.status = await page.evaluate(() => document.getElementById("status").textContent);
  // Where the page is now, and every entry of the tab's history.
  result.location = await page.evaluate(() => location.href);
  result.history = (await cdp.send("Page.getNavigationHistory")).entries.map((e) => e.url);
  // vmgate's notices are in the status line; the serial terminal holds
  // only the guest's bytes.
  result.notice = await page.evaluate(() => document.getElementById("notice")?.textContent);
  result.serialText = await page.evaluate(() => {
    if (!window.vmgate.term) return null;
    const b = window.vmgate.term.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
    return lines.join("\n");
  });
  await page.screenshot({ path: join(out, "page.png") });
  if (process.env.VMGATE_CLICK === "1") {
    await page.click("#screen canvas", { position: { x: 50, y: 50 } });
  }
  if (process.env.VMGATE_TYPE) {
    await page.click("#screen canvas");
    await typeLikeAPerson(page, process.env.VMGATE_TYPE);
    await page.keyboard.press("Enter");
    // Let the last key events leave before the browser goes.
    await new Promise((r) => setTimeout(r, 1000));
    await page.screenshot({ path: join(out, "typed.png") });
  }
  if (process.env.VMGATE_TYPE_BUTTON) {
    await page.fill("#paste-text", process.env.VMGATE_TYPE_BUTTON);
    await page.click("#type");
    await page.keyboard.press("Enter");
    await new Promise((r) => setTimeout(r, 1000));
    await page.screenshot({ path: join(out, "typed-button.png") });
  }
  if (process.env.VMGATE_UNTIL_CLOSED === "1") {
    await until("the screen to disconnect", () => window.vmgate.screen === "disconnected");
    result.closedStatus = await page.evaluate(() => document.getElementById("status").textContent);
    await page.screenshot({ path: join(out, "closed.png") });
  }
  result.ok = true;
} catch (e) {
  result.ok = false;
  result.error = String(e && e.stack || e);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result) + "\n");
