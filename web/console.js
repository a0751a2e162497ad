// vmgate web console: the serial console of a guest in xterm.js.
//
// The ticket comes in the URL fragment (#ticket=...), which browsers never
// send to a server or put in Referer headers. The page reads the ticket's
// claims only to know what to show; the gateway verifies it.
(function () {
  "use strict";
  const statusEl = document.getElementById("status");
  const titleEl = document.getElementById("title");

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text;
  }

  function claimsOf(ticket) {
    const part = ticket.split(".")[1] || "";
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(b64 + "===".slice((b64.length + 3) % 4)));
  }

  const params = new URLSearchParams(location.hash.slice(1));
  const ticket = params.get("ticket");
  // A ticket for the screen opens the screen page (serial beside it).
  if (ticket && !params.get("channel")) {
    try {
      if (claimsOf(ticket).channels.includes("vnc")) {
        location.replace("/screen" + location.hash);
        return;
      }
    } catch (e) {
      // Malformed: reported below.
    }
  }
  // The ticket is single-use: keep it out of the history and the address bar.
  history.replaceState(null, "", location.pathname);
  if (!ticket) {
    setStatus("error", "no ticket in the URL: open the URL printed by `vmgate ticket`");
    return;
  }
  let claims;
  try {
    claims = claimsOf(ticket);
  } catch (e) {
    setStatus("error", "malformed ticket in the URL");
    return;
  }
  const channel = params.get("channel") || claims.channels.find((c) => c !== "vnc");
  titleEl.textContent = `${claims.guest} · ${channel}`;
  document.title = `${claims.guest} · ${channel} — vmgate`;

  const term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 10000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  window.vmgateTerm = term; // for tests and the curious

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/ws/${encodeURIComponent(claims.guest)}/${encodeURIComponent(channel)}?ticket=${encodeURIComponent(ticket)}`;
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  const readOnly = claims.mode === "read-only";

  ws.onopen = () => {
    setStatus(readOnly ? "read-only" : "connected", readOnly ? "connected, read-only" : "connected");
    term.focus();
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const msg = JSON.parse(ev.data);
      if (msg.type === "notice") {
        term.write(`\r\n\x1b[2m[vmgate] ${msg.text}\x1b[0m\r\n`);
      }
      return;
    }
    term.write(new Uint8Array(ev.data));
  };
  ws.onclose = (ev) => {
    const why = ev.reason || "connection lost";
    setStatus("disconnected", `disconnected: ${why} (${ev.code})`);
    term.write(`\r\n\x1b[31m[vmgate] disconnected: ${why}\x1b[0m\r\n`);
  };
  term.onData((d) => {
    if (ws.readyState === WebSocket.OPEN && !readOnly) ws.send(encoder.encode(d));
  });
})();
