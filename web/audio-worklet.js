// vmgate's audio player, on the browser's audio thread (an AudioWorklet).
//
// The page posts stereo Float32 chunks as they arrive from the network; this
// plays them through a small jitter buffer that adapts, and keeps latency
// from growing when the guest's clock and the sound card's drift apart:
//
// - it starts (and restarts after running dry) once TARGET frames wait, 40
//   to 80 ms worth: it starts at 60 ms, grows by 10 ms after each underrun
//   and shrinks by 5 ms after 10 s without one;
// - drift: above 1.25 x TARGET it plays one frame fewer per 128-frame block
//   (drops one: 0.8 %, a pitch change too small to hear), below 0.5 x
//   TARGET it plays one frame twice;
// - bursts: above 1.5 x TARGET for half a second, or above TARGET + 250 ms
//   at once (a stall the network made up for), it drops down to TARGET in
//   one cut rather than play late;
// - the buffer holds at most 1 s; what comes when it is full is dropped.
//
// Every 250 ms it posts its counters to the page.
const MIN_MS = 40, MAX_MS = 80, START_MS = 60;

class Player extends AudioWorkletProcessor {
  constructor() {
    super();
    this.cap = Math.ceil(sampleRate); // 1 s
    this.l = new Float32Array(this.cap);
    this.r = new Float32Array(this.cap);
    this.read = 0; // positions, modulo cap
    this.level = 0; // frames waiting
    this.targetMs = START_MS;
    this.playing = false; // false: gathering TARGET frames first
    this.stats = { underruns: 0, dropped: 0, duplicated: 0, played: 0, overflow: 0, received: 0 };
    this.sinceUnderrun = 0;
    this.overSince = null; // when the level went above 1.5 x TARGET
    this.lastReport = 0;
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.reset) {
        // After a pause or a hidden tab: start afresh, no stale sound.
        this.level = 0;
        this.playing = false;
        this.overSince = null;
        return;
      }
      this.push(m.l, m.r);
    };
  }

  target() {
    return Math.round((this.targetMs * sampleRate) / 1000);
  }

  push(l, r) {
    this.stats.received += l.length;
    for (let i = 0; i < l.length; i++) {
      if (this.level >= this.cap) {
        this.stats.overflow += l.length - i;
        return;
      }
      const at = (this.read + this.level) % this.cap;
      this.l[at] = l[i];
      this.r[at] = r[i];
      this.level++;
    }
  }

  skip(n) {
    this.read = (this.read + n) % this.cap;
    this.level -= n;
    this.stats.dropped += n;
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const oL = out[0], oR = out[1] || out[0];
    const n = oL.length;
    const target = this.target();
    if (!this.playing && this.level >= target) this.playing = true;
    if (this.playing) {
      const high = this.level > 1.5 * target;
      if (!high) this.overSince = null;
      else if (this.overSince === null) this.overSince = currentTime;
      if (this.level > target + Math.round(0.25 * sampleRate) || (high && currentTime - this.overSince > 0.5)) {
        this.skip(this.level - target);
        this.overSince = null;
      } else if (this.level > 1.25 * target) {
        this.skip(1);
      }
    }
    const duplicate = this.playing && this.level < 0.5 * target ? 1 : 0;
    for (let i = 0; i < n; i++) {
      if (!this.playing || this.level === 0) {
        oL[i] = 0;
        oR[i] = 0;
        continue;
      }
      oL[i] = this.l[this.read];
      oR[i] = this.r[this.read];
      if (duplicate && i === n >> 1) {
        // This frame again, in place of the next: one frame longer.
        this.stats.duplicated++;
        continue;
      }
      this.read = (this.read + 1) % this.cap;
      this.level--;
      this.stats.played++;
    }
    if (this.playing && this.level === 0) {
      // Ran dry: gather a longer head start next time.
      this.playing = false;
      this.stats.underruns++;
      this.targetMs = Math.min(MAX_MS, this.targetMs + 10);
      this.sinceUnderrun = 0;
    } else {
      this.sinceUnderrun += n;
      if (this.sinceUnderrun > 10 * sampleRate && this.targetMs > MIN_MS) {
        this.targetMs = Math.max(MIN_MS, this.targetMs - 5);
        this.sinceUnderrun = 0;
      }
    }
    if (currentTime - this.lastReport > 0.25) {
      this.lastReport = currentTime;
      this.port.postMessage({
        ...this.stats,
        levelMs: (this.level * 1000) / sampleRate,
        targetMs: this.targetMs,
        playing: this.playing,
      });
    }
    return true;
  }
}

registerProcessor("vmgate-player", Player);
