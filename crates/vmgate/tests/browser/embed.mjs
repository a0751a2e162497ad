// A control panel framing vmgate's serial console page, in Debian's
// headless Chromium (playwright-core). The panel's origin is served by
// Playwright's request routing, so no DNS or extra server is needed:
//   http://localhost:8080  allowed by the gateway's [embed] frame_ancestors
//   http://localhost:8081   not allowed
// Reports one JSON line on stdout. Driven by crates/vmgate/tests/embed.rs.
//
// Environment:
//   VMGATE_URL   a console ticket URL (…/console#ticket=…) for the panel
//   VMGATE_URL2  another one, for the page that must not frame it
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const url = process.env.VMGATE_URL;
const url2 = process.env.VMGATE_URL2;
const deadline = Date.now() + 60_000;
const profile = mkdtempSync(join(tmpdir(), "vmgate-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  ignoreHTTPSErrors: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    // The gateway is on 127.0.0.1 here; a panel and a gateway on public
    // addresses do not meet Chromium's local-network checks.
    "--disable-features=LocalNetworkAccessChecks",
  ],
});
const result = { console: [] };

// The panel: the console in an iframe, and a frame from another site that
// tries to command it. Events from vmgate are collected in window.events.
const panel = (consoleUrl) => `<!doctype html><meta charset="utf-8">
<iframe id="console" src="${consoleUrl}" width="800" height="400"></iframe>
<iframe id="other" src="http://localhost:8081/attacker"></iframe>
<script>
  window.events = [];
  addEventListener("message", (e) => events.push({ origin: e.origin, data: e.data }));
</script>`;
const attacker = `<!doctype html><script>
  window.attack = () => parent.frames[0].postMessage({ vmgate: "disconnect" }, "*");
</script>`;
await context.route("http://localhost:8080/**", (r) =>
  r.fulfill({ contentType: "text/html", body: panel(url) }));
await context.route("http://localhost:8081/attacker", (r) =>
  r.fulfill({ contentType: "text/html", body: attacker }));
await context.route("http://localhost:8081/panel", (r) =>
  r.fulfill({ contentType: "text/html", body: panel(url2) }));

async function until(what, fn) {
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => result.console.push(`${m.type()}: ${m.text()}`));
  page.on("requestfailed", (r) => result.console.push(`failed ${r.url()}: ${r.failure()?.errorText}`));
  page.on("response", (r) => r.status() >= 400 && result.console.push(`HTTP ${r.status()} ${r.url()}`));
  await page.goto("http://localhost:8080/");
  const events = () => page.evaluate(() => window.events);
  await until("the connected event", async () => (await events()).some((e) => e.data.vmgate === "connected"));
  result.connectedFrom = (await events()).find((e) => e.data.vmgate === "connected").origin;
  const frame = () => page.frames().find((f) => f.url().includes("/console"));
  const terminalText = () => frame().evaluate(() => {
    const b = window.vmgateTerm.buffer.active;
    let s = "";
    for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + "\n";
    return s;
  });

  // A command from the panel: typed into the guest.
  await page.evaluate(() => document.getElementById("console").contentWindow
    .postMessage({ vmgate: "paste", text: "echo embedded-$((6*7))\n" }, "*"));
  await until("the pasted command's answer", async () => (await terminalText()).includes("embedded-42"));
  result.pasted = true;

  // A command from another site's frame in the same panel: ignored.
  const other = page.frames().find((f) => f.url().includes("localhost:8081/attacker"));
  await other.evaluate(() => window.attack());
  await new Promise((r) => setTimeout(r, 1500));
  result.afterForeignCommand = await frame().evaluate(() => document.getElementById("status").textContent);

  // Disconnect from the panel: the session ends, the panel hears why.
  await page.evaluate(() => document.getElementById("console").contentWindow
    .postMessage({ vmgate: "disconnect" }, "*"));
  await until("the disconnected event", async () => (await events()).some((e) => e.data.vmgate === "disconnected"));
  result.disconnected = (await events()).find((e) => e.data.vmgate === "disconnected").data;

  // A site that is not allowed cannot frame the page at all.
  const evil = await context.newPage();
  const blocked = [];
  evil.on("console", (m) => blocked.push(m.text()));
  await evil.goto("http://localhost:8081/panel");
  await new Promise((r) => setTimeout(r, 2000));
  const evilFrame = evil.frames().find((f) => f.url().includes("/console"));
  result.evilFramed = evilFrame
    ? await evilFrame.evaluate(() => !!window.vmgateTerm).catch(() => false)
    : false;
  result.evilEvents = await evil.evaluate(() => window.events.length);
  result.cspRefusal = blocked.some((t) => t.includes("frame-ancestors"));
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack || e);
  for (const p of context.pages()) {
    for (const f of p.frames()) {
      const status = await f.evaluate(() => document.getElementById("status")?.textContent).catch((x) => `(${x})`);
      (result.frames ||= []).push({ url: f.url(), status });
    }
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result) + "\n");
