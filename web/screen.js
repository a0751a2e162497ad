// vmgate screen page: a guest's VNC screen (noVNC) and, when the ticket
// allows it, its serial console (xterm.js) beside it.
//
// The ticket in the URL fragment is redeemed once, with POST /api/session;
// the answer's session token opens the page's WebSockets (screen, serial,
// audio), each once. Over HTTP/2 they share the page's TLS connection.
import RFB from "/novnc/core/rfb.js";
import Inflator from "/novnc/core/inflator.js";
import { startAudio, noAudio } from "/assets/audio.js";
import { startMedia } from "/assets/media.js";

// When the guest live-migrates, the gateway splices this screen onto the
// new node's QEMU and sets the reset bits of the first Tight rectangle
// (docs/migration.md). noVNC's own reset (pako's inflateReset) keeps the
// old window buffer but sets its size to 0, so its stream can never again
// refer back past the rectangle being decoded, and the next one fails with
// "zlib inflate failed". A reset here starts a fresh stream instead, which
// is what the reset bits mean; the page says so with `tight=true`.
Inflator.prototype.reset = function reset() {
  const fresh = new Inflator();
  this.strm = fresh.strm;
  this.chunkSize = fresh.chunkSize;
};

const statusEl = document.getElementById("status");
const titleEl = document.getElementById("title");
const $ = (id) => document.getElementById(id);
// For tests and the curious: the page's state.
const page = (window.vmgate = { screen: "connecting", serial: null, closes: {} });

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

async function start() {
  const params = new URLSearchParams(location.hash.slice(1));
  const ticket = params.get("ticket");
  // The ticket is single-use: keep it out of the history and the address bar.
  history.replaceState(null, "", location.pathname);
  if (!ticket) {
    setStatus("error", "no ticket in the URL: open the URL printed by `vmgate ticket GUEST --channel vnc`");
    return;
  }
  let grant;
  try {
    const res = await fetch("/api/session", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ticket }),
      cache: "no-store",
    });
    grant = await res.json();
    if (!res.ok) throw new Error(grant.error || `HTTP ${res.status}`);
  } catch (e) {
    setStatus("error", `refused: ${e.message}`);
    page.screen = "refused";
    return;
  }
  const readOnly = grant.mode === "read-only";
  titleEl.textContent = grant.guest;
  document.title = `${grant.guest} — vmgate`;
  const wsUrl = (channel) => {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws/${encodeURIComponent(grant.guest)}/${encodeURIComponent(channel)}?session=${encodeURIComponent(grant.session)}`;
  };
  // `tight=true`: this page's Tight decoder resets its streams (below).
  if (grant.channels.includes("vnc")) openScreen(`${wsUrl("vnc")}&tight=true`, readOnly);
  else setStatus("error", "this ticket has no vnc channel");
  // Never in-band on the screen's socket: noVNC ends a session on QEMU's
  // audio messages. Listening is not input: read-only pages may.
  if (grant.channels.includes("audio")) page.audio = startAudio(wsUrl("audio"), $("speaker"));
  else noAudio($("speaker"), "this ticket has no audio channel: mint one with --channel audio");
  // Virtual media: the ticket names the drive (`media`); inserting is
  // input, so read-only pages do not get the control.
  const media = grant.channels.find((c) => c === "media" || c.startsWith("media."));
  if (media && !readOnly) {
    page.media = startMedia(wsUrl(media), {
      box: $("media"),
      file: $("media-file"),
      eject: $("media-eject"),
      status: $("media-status"),
    });
  }
  const serial = grant.channels.find((c) => c !== "vnc" && c !== "audio" && c !== media);
  if (serial) openSerial(wsUrl(serial), serial, readOnly);
}

function openScreen(url, readOnly) {
  // Our own socket, so the gateway's close reason can be shown: noVNC
  // reports only whether a disconnect was clean.
  const ws = new WebSocket(url, ["binary"]);
  let closed = null;
  ws.addEventListener("close", (ev) => {
    closed = ev;
    page.closes.vnc = { code: ev.code, reason: ev.reason };
  });
  const rfb = new RFB($("screen"), ws, { shared: true });
  page.rfb = rfb;
  rfb.viewOnly = readOnly;
  rfb.scaleViewport = $("scale").checked;
  rfb.focusOnClick = true;
  $("scale").addEventListener("change", (e) => (rfb.scaleViewport = e.target.checked));
  const controls = ["cad", "paste-text", "paste", "type"];
  rfb.addEventListener("connect", () => {
    page.screen = "connected";
    setStatus(readOnly ? "read-only" : "connected", readOnly ? "connected, read-only (input is dropped by the gateway)" : "connected");
    if (!readOnly) controls.forEach((id) => ($(id).disabled = false));
    rfb.focus();
  });
  rfb.addEventListener("disconnect", (e) => {
    page.screen = "disconnected";
    controls.forEach((id) => ($(id).disabled = true));
    const why = closed && closed.reason ? `${closed.reason} (${closed.code})`
      : e.detail.clean ? "the session ended" : "connection lost";
    setStatus("disconnected", `disconnected: ${why}`);
  });
  rfb.addEventListener("securityfailure", (e) => {
    setStatus("disconnected", `VNC security failure: ${e.detail.reason || e.detail.status}`);
  });
  rfb.addEventListener("desktopname", (e) => (titleEl.textContent = e.detail.name));
  $("cad").addEventListener("click", () => { rfb.sendCtrlAltDel(); rfb.focus(); });
  const embed = window.vmgateEmbed;
  rfb.addEventListener("connect", () => embed.emit("connected"));
  rfb.addEventListener("disconnect", () => embed.emit("disconnected", { code: closed ? closed.code : 1006, reason: closed ? closed.reason : "" }));
  embed.on("ctrl-alt-del", () => { if (!readOnly) rfb.sendCtrlAltDel(); });
  embed.on("paste", (d) => { if (!readOnly && typeof d.text === "string") rfb.clipboardPasteFrom(d.text); });
  embed.on("disconnect", () => rfb.disconnect());
  $("paste").addEventListener("click", () => { rfb.clipboardPasteFrom($("paste-text").value); rfb.focus(); });
  $("type").addEventListener("click", () => {
    // Plain key presses (keysyms), for guests without a clipboard agent.
    // The guest gets scancodes, so Shift is held for what needs it on a
    // US layout, as a person would.
    const SHIFT_L = 0xffe1;
    for (const ch of $("paste-text").value) {
      const cp = ch.codePointAt(0);
      const keysym = ch === "\n" ? 0xff0d : cp < 0x100 ? cp : 0x1000000 + cp;
      const shift = /[A-Z~!@#$%^&*()_+{}|:"<>?]/.test(ch);
      if (shift) rfb.sendKey(SHIFT_L, null, true);
      rfb.sendKey(keysym, null);
      if (shift) rfb.sendKey(SHIFT_L, null, false);
    }
    rfb.focus();
  });
}

function openSerial(url, channel, readOnly) {
  $("serial").hidden = false;
  const term = new Terminal({ cursorBlink: true, scrollback: 10000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($("terminal"));
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  page.term = term;
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  ws.onopen = () => (page.serial = "connected");
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      // vmgate's notices go to the status line, never into the terminal,
      // where guest output could imitate them.
      let msg = {};
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (msg.type === "notice" && typeof msg.text === "string") $("notice").textContent = `${channel}: ${msg.text}`;
      return;
    }
    term.write(new Uint8Array(ev.data));
  };
  ws.onclose = (ev) => {
    page.serial = "disconnected";
    page.closes[channel] = { code: ev.code, reason: ev.reason };
    $("notice").textContent = `${channel} disconnected: ${ev.reason || "connection lost"}`;
  };
  term.onData((d) => {
    if (ws.readyState === WebSocket.OPEN && !readOnly) ws.send(encoder.encode(d));
  });
}

start();
