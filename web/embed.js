// vmgate's pages inside another site's page: a control panel's iframe.
//
// Only a parent the gateway allows ([embed] frame_ancestors, which is also
// the pages' CSP frame-ancestors, so no other site can frame them) gets
// events and may send commands, by window.postMessage:
//   events, to the parent:   {vmgate: "connected"}
//                            {vmgate: "disconnected", code, reason}
//                            {vmgate: "ending-soon", seconds}
//   commands, from it:       {vmgate: "ctrl-alt-del"}  (screen page)
//                            {vmgate: "paste", text}    (typed into the guest)
//                            {vmgate: "disconnect"}
// Messages from any other window or origin are ignored. docs/embedding.md
// shows a panel page.
(function () {
  "use strict";
  const framed = window.parent !== window;
  const handlers = {};
  const early = []; // events before the parent is known (bounded)
  let parentOrigin = null;

  function allowed(pattern, origin) {
    if (pattern === origin) return true;
    if (!pattern.endsWith(":*")) return false;
    const base = pattern.slice(0, -2);
    return origin.startsWith(base + ":") && /^[0-9]{1,5}$/.test(origin.slice(base.length + 1));
  }

  window.vmgateEmbed = {
    emit(event, detail) {
      if (!framed) return;
      const msg = Object.assign({}, detail || {}, { vmgate: event });
      if (parentOrigin) window.parent.postMessage(msg, parentOrigin);
      else if (early.length < 16) early.push(msg);
    },
    on(command, fn) {
      handlers[command] = fn;
    },
  };
  if (!framed) return;

  const ancestor =
    (location.ancestorOrigins && location.ancestorOrigins[0]) ||
    (document.referrer ? new URL(document.referrer).origin : null);
  fetch("/embed.json")
    .then((r) => r.json())
    .then((cfg) => {
      const patterns = Array.isArray(cfg.frame_ancestors) ? cfg.frame_ancestors : [];
      if (!ancestor || !patterns.some((p) => allowed(p, ancestor))) return;
      parentOrigin = ancestor;
      for (const m of early.splice(0)) window.parent.postMessage(m, parentOrigin);
      window.addEventListener("message", (e) => {
        if (e.source !== window.parent || e.origin !== parentOrigin) return;
        const d = e.data;
        if (!d || typeof d.vmgate !== "string" || !Object.hasOwn(handlers, d.vmgate)) return;
        handlers[d.vmgate](d);
      });
    })
    .catch(() => {});
})();
