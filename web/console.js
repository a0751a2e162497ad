// vmgate web console: the serial console of a guest in xterm.js.
//
// The ticket comes in the URL fragment (#ticket=...), which browsers never
// send to a server or put in Referer headers. The page reads the ticket's
// claims only to know what to show; the gateway verifies it.
//
// vmgate's own messages (notices, why the session ended) go to the status
// line, never into the terminal: there, guest output could imitate them.
(function () {
  "use strict";
  const statusEl = document.getElementById("status");
  const noticeEl = document.getElementById("notice");
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

  const embed = window.vmgateEmbed;
  ws.onopen = () => {
    setStatus(readOnly ? "read-only" : "connected", readOnly ? "connected, read-only" : "connected");
    term.focus();
    embed.emit("connected");
    // The ticket's maximum session length: tell the panel a minute ahead.
    if (typeof claims.max_session === "number" && claims.max_session > 60) {
      setTimeout(() => embed.emit("ending-soon", { seconds: 60 }), (claims.max_session - 60) * 1000);
    }
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      // A control message (crates/wire/src/control.rs); unknown kinds are
      // ignored.
      let msg = {};
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (msg.type === "notice" && typeof msg.text === "string") noticeEl.textContent = msg.text;
      return;
    }
    term.write(new Uint8Array(ev.data));
  };
  ws.onclose = (ev) => {
    const why = ev.reason || "connection lost";
    setStatus("disconnected", `disconnected: ${why} (${ev.code})`);
    embed.emit("disconnected", { code: ev.code, reason: ev.reason });
  };
  embed.on("paste", (d) => {
    if (typeof d.text === "string" && ws.readyState === WebSocket.OPEN && !readOnly) {
      ws.send(encoder.encode(d.text));
    }
  });
  embed.on("disconnect", () => ws.close(1000, "closed by the embedding page"));
  term.onData((d) => {
    if (ws.readyState === WebSocket.OPEN && !readOnly) ws.send(encoder.encode(d));
  });
})();
