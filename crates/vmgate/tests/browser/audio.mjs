// The screen page's sound in Debian's headless Chromium (playwright-core):
// opens a ticket URL naming vnc and audio, checks the speaker is off, clicks
// it, says "vmgate-audio: on" on stderr (the test then plays a tone in the
// guest), and reports as one JSON line on stdout what the page's player
// heard (its test hook: the dominant frequency of what plays, by the page's
// AnalyserNode), the worklet's counters, the speaker's labels, and whether
// the screen changed while the sound played. Driven by
// crates/vmgate/tests/audio.rs.
//
// Environment: VMGATE_URL (the ticket URL).
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHash } from "node:crypto";

const deadline = Date.now() + 90_000;
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
const result = { websockets: {}, documentProtocol: null, console: [], labels: {} };
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => result.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
  page.on("response", (r) => r.status() >= 400 && result.console.push(`HTTP ${r.status()} ${r.url()}`));
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const wsUrls = {};
  cdp.on("Network.webSocketCreated", (e) => (wsUrls[e.requestId] = e.url));
  cdp.on("Network.webSocketHandshakeResponseReceived", (e) => {
    result.websockets[new URL(wsUrls[e.requestId]).pathname] = { status: e.response.status };
  });
  cdp.on("Network.responseReceived", (e) => {
    if (e.response.status >= 400) result.console.push(`HTTP ${e.response.status} ${e.response.url}`);
    if (e.type === "Document" && e.response.url.includes("/screen")) result.documentProtocol = e.response.protocol;
  });
  await page.goto(process.env.VMGATE_URL);
  const until = async (what, fn) => {
    while (!(await page.evaluate(fn))) {
      if (Date.now() > deadline) {
        const a = await page.evaluate(() => JSON.stringify(window.vmgate && window.vmgate.audio));
        throw new Error(`timed out waiting for ${what}; audio: ${a}`);
      }
      await sleep(100);
    }
  };
  const label = () => page.evaluate(() => document.getElementById("speaker").textContent);
  const canvasHash = async () => {
    const b64 = await page.evaluate(() => {
      const c = document.querySelector("#screen canvas");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let s = "";
      for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
      return btoa(s);
    });
    return createHash("sha256").update(b64).digest("hex");
  };
  await until("the screen to connect", () => window.vmgate && window.vmgate.screen === "connected");
  await until("the audio socket", () => window.vmgate.audio);
  await sleep(500);
  result.labels.before = await label();
  result.stateBefore = await page.evaluate(() => window.vmgate.audio.state);
  await page.click("#speaker");
  await until("the speaker to turn on", () => window.vmgate.audio.state === "on");
  result.rate = await page.evaluate(() => window.vmgate.audio.rate);
  result.labels.silent = await label();
  process.stderr.write("vmgate-audio: on\n");
  const asked = Date.now();
  await until("the guest to play", () => window.vmgate.audio.guest === "playing");
  await until("sound out of the player", () => window.vmgate.audio.dominantHz() !== null);
  result.firstSoundMs = Date.now() - asked;
  result.labels.playing = await label();
  const frames = () => page.evaluate(() => window.vmgate.audio.receivedFrames);
  const before = await canvasHash();
  const framesBefore = await frames();
  // Let the analyser's window (0.7 s) fill with the tone.
  await sleep(1200);
  result.dominantHz = await page.evaluate(() => window.vmgate.audio.dominantHz());
  await sleep(1300);
  result.screenChanged = (await canvasHash()) !== before;
  // Sound kept coming while the screen changed.
  result.framesWhileScreenChanged = (await frames()) - framesBefore;
  result.player = await page.evaluate(() => window.vmgate.audio.player);
  result.receivedFrames = await page.evaluate(() => window.vmgate.audio.receivedFrames);
  await until("the guest to go quiet", () => window.vmgate.audio.guest === "silent");
  result.labels.after = await label();
  result.ok = true;
} catch (e) {
  result.ok = false;
  result.error = String((e && e.stack) || e);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result) + "\n");
