// vmgate screen page: the guest's sound, behind the speaker button.
//
// The page's `audio` WebSocket (same origin, so over HTTP/2 it shares the
// page's one connection) opens with the page, so it joins the page session
// in time, and asks at once for S16 stereo at the AudioContext's own rate
// (no resampling in the browser), paused: nothing flows and nothing plays
// until the user clicks the speaker, as browsers require. A click resumes;
// another pauses. The stream is vmgate_wire::audio's framing; the player is
// an AudioWorklet (audio-worklet.js) with a small jitter buffer.

const MAGIC = [0x56, 0x4d, 0x47, 0x41]; // "VMGA"
const S16 = 3, PAUSE = 0, RESUME = 1;
const BEGIN = 1, END = 2, PCM = 3, DROPPED = 4;
const MAX_PCM = 1 << 20;
// QEMU resamples to at most this.
const MAX_RATE = 48000;

// Reads the agent's stream: an 11-byte header, then records. Calls
// on.header(h), on.begin(), on.end(), on.pcm(Uint8Array), on.dropped(n);
// throws on bytes that are not this stream.
class StreamReader {
  constructor(on) {
    this.on = on;
    this.head = new Uint8Array(11);
    this.have = 0; // header or record-header bytes held
    this.headerDone = false;
    this.pcmLeft = 0;
  }

  feed(bytes) {
    let at = 0;
    while (at < bytes.length) {
      if (this.pcmLeft > 0) {
        const n = Math.min(this.pcmLeft, bytes.length - at);
        this.on.pcm(bytes.subarray(at, at + n));
        this.pcmLeft -= n;
        at += n;
        continue;
      }
      const need = !this.headerDone ? 11 : this.have === 0 ? 1 : this.recordNeed(this.head[0]);
      const n = Math.min(need - this.have, bytes.length - at);
      this.head.set(bytes.subarray(at, at + n), this.have);
      this.have += n;
      at += n;
      if (this.have < need) continue;
      if (this.headerDone && this.have === 1 && this.recordNeed(this.head[0]) > 1) continue;
      this.complete();
    }
  }

  recordNeed(kind) {
    if (kind === BEGIN || kind === END) return 1;
    if (kind === PCM || kind === DROPPED) return 5;
    throw new Error(`unknown audio record ${kind}`);
  }

  complete() {
    const h = this.head;
    this.have = 0;
    if (!this.headerDone) {
      if (MAGIC.some((b, i) => h[i] !== b)) throw new Error("not a vmgate audio stream");
      if (h[4] !== 1) throw new Error(`audio stream version ${h[4]}`);
      this.headerDone = true;
      const rate = ((h[7] << 24) | (h[8] << 16) | (h[9] << 8) | h[10]) >>> 0;
      this.on.header({ sample: h[5], channels: h[6], rate });
      return;
    }
    const n = ((h[1] << 24) | (h[2] << 16) | (h[3] << 8) | h[4]) >>> 0;
    if (h[0] === BEGIN) this.on.begin();
    else if (h[0] === END) this.on.end();
    else if (h[0] === DROPPED) this.on.dropped(n);
    else if (n > MAX_PCM) throw new Error(`audio record of ${n} bytes`);
    else this.pcmLeft = n;
  }
}

// Starts the audio of a page: `url` is the audio WebSocket, `button` the
// speaker. Returns the test hook's object (window.vmgate.audio).
export function startAudio(url, button) {
  const hook = {
    state: "off", // off, on, unavailable
    guest: "silent", // silent, playing
    reason: null,
    receivedFrames: 0,
    player: null, // the worklet's counters
    rate: null,
    dominantHz: () => null,
  };
  let ctx = new AudioContext();
  if (ctx.sampleRate > MAX_RATE) {
    ctx.close();
    ctx = new AudioContext({ sampleRate: MAX_RATE });
  }
  hook.rate = ctx.sampleRate;
  let node = null, analyser = null;
  let carry = new Uint8Array(0); // a frame cut by a message boundary

  const show = () => {
    const label = {
      off: "🔇 sound off",
      on: hook.guest === "playing" ? "🔊 sound on" : "🔈 sound on (the guest is silent)",
      unavailable: `🔇 no sound: ${hook.reason}`,
    }[hook.state];
    button.textContent = label;
    button.dataset.state = hook.state === "on" ? `on-${hook.guest}` : hook.state;
    button.disabled = hook.state === "unavailable";
    button.title = hook.state === "off" ? "Hear the guest" : hook.state === "on" ? "Stop the sound" : hook.reason;
  };
  const unavailable = (why) => {
    hook.state = "unavailable";
    hook.reason = why;
    show();
    if (node) node.port.postMessage({ reset: true });
    ctx.suspend().catch(() => {});
  };

  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    const r = ctx.sampleRate;
    // The format wanted, then "paused" until the user clicks.
    ws.send(new Uint8Array([...MAGIC, 1, S16, 2, r >>> 24, (r >>> 16) & 255, (r >>> 8) & 255, r & 255, PAUSE]));
  };
  const reader = new StreamReader({
    header: (h) => {
      if (h.sample !== S16 || h.channels !== 2) unavailable(`unexpected format ${h.sample}/${h.channels}`);
    },
    begin: () => {
      hook.guest = "playing";
      show();
    },
    end: () => {
      hook.guest = "silent";
      show();
    },
    dropped: () => {},
    pcm: (bytes) => {
      let b = bytes;
      if (carry.length) {
        b = new Uint8Array(carry.length + bytes.length);
        b.set(carry);
        b.set(bytes, carry.length);
      }
      const frames = b.length >> 2;
      carry = b.slice(frames << 2);
      if (!node || hook.state !== "on" || frames === 0) return;
      const v = new DataView(b.buffer, b.byteOffset, frames << 2);
      const l = new Float32Array(frames), r = new Float32Array(frames);
      for (let i = 0; i < frames; i++) {
        l[i] = v.getInt16(4 * i, true) / 32768;
        r[i] = v.getInt16(4 * i + 2, true) / 32768;
      }
      hook.receivedFrames += frames;
      node.port.postMessage({ l, r }, [l.buffer, r.buffer]);
    },
  });
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") return; // notices: none are about sound
    try {
      reader.feed(new Uint8Array(ev.data));
    } catch (e) {
      ws.close(4400, String(e.message).slice(0, 100));
      unavailable(e.message);
    }
  };
  ws.onclose = (ev) => {
    if (hook.state !== "unavailable") unavailable(ev.reason ? `${ev.reason} (${ev.code})` : "connection lost");
  };

  async function turnOn() {
    await ctx.resume();
    if (!node) {
      await ctx.audioWorklet.addModule("/assets/audio-worklet.js");
      node = new AudioWorkletNode(ctx, "vmgate-player", { numberOfInputs: 0, outputChannelCount: [2] });
      node.port.onmessage = (e) => (hook.player = e.data);
      analyser = ctx.createAnalyser();
      analyser.fftSize = 32768;
      node.connect(analyser);
      analyser.connect(ctx.destination);
      // What is playing now, by the analyser's FFT: the loudest bin, or
      // null in silence.
      hook.dominantHz = () => {
        const d = new Float32Array(analyser.frequencyBinCount);
        analyser.getFloatFrequencyData(d);
        let best = 1;
        for (let i = 2; i < d.length; i++) if (d[i] > d[best]) best = i;
        return d[best] < -90 ? null : (best * ctx.sampleRate) / analyser.fftSize;
      };
    }
    node.port.postMessage({ reset: true });
    carry = new Uint8Array(0);
    if (ws.readyState === WebSocket.OPEN) ws.send(new Uint8Array([RESUME]));
    hook.state = "on";
    show();
  }

  function turnOff() {
    if (ws.readyState === WebSocket.OPEN) ws.send(new Uint8Array([PAUSE]));
    if (node) node.port.postMessage({ reset: true });
    ctx.suspend().catch(() => {});
    hook.state = "off";
    hook.guest = "silent";
    show();
  }

  button.hidden = false;
  button.addEventListener("click", () => {
    if (hook.state === "off") turnOn().catch((e) => unavailable(`cannot play: ${e.message}`));
    else if (hook.state === "on") turnOff();
  });
  // A hidden tab's audio clock may stop; back in view, start afresh
  // rather than play what piled up.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible" || hook.state !== "on") return;
    if (node) node.port.postMessage({ reset: true });
    ctx.resume().catch(() => {});
  });
  show();
  return hook;
}

// The speaker of a page whose ticket does not name `audio`.
export function noAudio(button, why) {
  button.hidden = false;
  button.disabled = true;
  button.dataset.state = "unavailable";
  button.textContent = "🔇 no sound";
  button.title = why;
}
