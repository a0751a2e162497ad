// vmgate screen page: virtual media. A file picked in the page becomes the
// guest's CD-ROM: the page is the NBD server, and serves each block the
// guest reads with File.slice(), so a 4 GiB ISO is never read whole into
// memory. docs/media.md describes the protocol; crates/nbd is the same
// server in Rust (server.rs) and the same messages (media.rs).
//
// The page's `media` WebSocket opens with the page (its page session takes
// each channel once, soon after the page loads) and stays open: each
// medium is INSERT … EJECTED on it, one after another.

// The media stream's messages (crates/nbd/src/media.rs).
const NBD = 0, INSERT = 1, EJECT = 2, INSERTED = 16, REPORT = 17, EJECTED = 18;
const HEADER = 5, MAX_NBD = 256 * 1024, MAX_CONTROL = 4096, MAX_NAME = 255;

// NBD's numbers (crates/nbd/src/proto.rs).
const OPTS_MAGIC = 0x49484156454f5054n, REPLY_MAGIC = 0x0003e889045565a9n;
const REQUEST_MAGIC = 0x25609513, SIMPLE_REPLY_MAGIC = 0x67446698;
const OPT_EXPORT_NAME = 1, OPT_ABORT = 2, OPT_LIST = 3, OPT_STARTTLS = 5, OPT_INFO = 6, OPT_GO = 7;
const REP_ACK = 1, REP_SERVER = 2, REP_INFO = 3;
const REP_ERR_UNSUP = 0x80000001, REP_ERR_POLICY = 0x80000002, REP_ERR_INVALID = 0x80000003, REP_ERR_UNKNOWN = 0x80000006;
const INFO_EXPORT = 0, INFO_BLOCK_SIZE = 3;
const TRANSMISSION_FLAGS = 3; // HAS_FLAGS | READ_ONLY
const CMD_READ = 0, CMD_WRITE = 1, CMD_DISC = 2, CMD_FLUSH = 3, CMD_TRIM = 4, CMD_WRITE_ZEROES = 6;
const CMD_FLAGS_KNOWN = 0x1f;
const EPERM = 1, EIO = 5, EINVAL = 22;
const MAX_REQUEST = 32 << 20, MAX_OPTION = 4096 + 64, MAX_OPTIONS = 32;

function message(type, payload) {
  const m = new Uint8Array(HEADER + payload.length);
  const v = new DataView(m.buffer);
  v.setUint8(0, type);
  v.setUint32(1, payload.length);
  m.set(payload, HEADER);
  return m;
}

function concat(a, b) {
  if (a.length === 0) return b;
  const c = new Uint8Array(a.length + b.length);
  c.set(a);
  c.set(b, a.length);
  return c;
}

// The agent's messages, as they arrive (crates/nbd/src/media.rs Decoder,
// agent → client). NBD payloads are handed on in the pieces they came in.
class Decoder {
  constructor(on) {
    this.on = on;
    this.head = new Uint8Array(0);
    this.nbdLeft = 0;
    this.control = null; // { type, len, data }
  }

  feed(bytes) {
    let at = 0;
    while (at < bytes.length) {
      if (this.nbdLeft > 0) {
        const n = Math.min(this.nbdLeft, bytes.length - at);
        this.on.nbd(bytes.subarray(at, at + n));
        this.nbdLeft -= n;
        at += n;
      } else if (this.control) {
        const c = this.control;
        const n = Math.min(c.len - c.have, bytes.length - at);
        c.data.set(bytes.subarray(at, at + n), c.have);
        c.have += n;
        at += n;
        if (c.have === c.len) {
          this.control = null;
          this.finish(c.type, c.data);
        }
      } else {
        const n = Math.min(HEADER - this.head.length, bytes.length - at);
        this.head = concat(this.head, bytes.slice(at, at + n));
        at += n;
        if (this.head.length < HEADER) break;
        const v = new DataView(this.head.buffer, this.head.byteOffset);
        const type = v.getUint8(0), len = v.getUint32(1);
        this.head = new Uint8Array(0);
        if (type === NBD) {
          if (len > MAX_NBD) throw new Error(`media message of ${len} bytes`);
          this.nbdLeft = len;
        } else if (type === INSERTED || type === REPORT || type === EJECTED) {
          if (len > MAX_CONTROL) throw new Error(`media message of ${len} bytes`);
          this.control = { type, len, have: 0, data: new Uint8Array(len) };
          if (len === 0) {
            this.control = null;
            this.finish(type, new Uint8Array(0));
          }
        } else {
          throw new Error(`unknown media message type ${type}`);
        }
      }
    }
  }

  finish(type, data) {
    const json = JSON.parse(new TextDecoder().decode(data));
    if (type === INSERTED) this.on.inserted(json);
    else if (type === EJECTED) this.on.ejected(json);
    else this.on.report(json);
  }
}

// A read-only NBD server for one file (crates/nbd/src/server.rs, the same
// rules): fixed newstyle; GO, INFO, EXPORT_NAME, LIST, ABORT answered,
// every other option NBD_REP_ERR_UNSUP; reads inside the file and at most
// 32 MiB served with File.slice(), others EINVAL; writes, trims and
// write-zeroes EPERM; flush succeeds; anything else EINVAL. Requests are
// served in order; `send(bytes)` gets the NBD stream's bytes.
export class NbdServer {
  constructor(file, send) {
    this.file = file;
    this.size = BigInt(file.size);
    this.send = send;
    this.buf = new Uint8Array(0);
    this.state = "flags";
    this.noZeroes = false;
    this.options = 0;
    this.skip = 0;
    this.bytesRead = 0;
    this.reads = 0;
    this.work = Promise.resolve();
    this.failed = null;
    const g = new Uint8Array(18);
    g.set(new TextEncoder().encode("NBDMAGICIHAVEOPT"));
    new DataView(g.buffer).setUint16(16, 3); // FIXED_NEWSTYLE | NO_ZEROES
    send(g);
  }

  // Bytes from the agent; served in order. Resolves when handled.
  feed(bytes) {
    this.buf = concat(this.buf, bytes);
    this.work = this.work.then(() => this.pump()).catch((e) => {
      this.failed = e;
      this.state = "done";
      throw e;
    });
    return this.work;
  }

  take(n) {
    const b = this.buf.slice(0, n);
    this.buf = this.buf.slice(n);
    return b;
  }

  optionReply(option, type, payload = new Uint8Array(0)) {
    const r = new Uint8Array(20 + payload.length);
    const v = new DataView(r.buffer);
    v.setBigUint64(0, REPLY_MAGIC);
    v.setUint32(8, option);
    v.setUint32(12, type);
    v.setUint32(16, payload.length);
    r.set(payload, 20);
    this.send(r);
  }

  reply(handle, error, data) {
    const r = new Uint8Array(16);
    const v = new DataView(r.buffer);
    v.setUint32(0, SIMPLE_REPLY_MAGIC);
    v.setUint32(4, error);
    v.setBigUint64(8, handle);
    this.send(r);
    if (data) this.send(data);
  }

  async pump() {
    for (;;) {
      if (this.state === "done") {
        this.buf = new Uint8Array(0);
        return;
      }
      if (this.state === "skip") {
        const n = Math.min(this.skip, this.buf.length);
        this.take(n);
        this.skip -= n;
        if (this.skip > 0) return;
        this.state = "request";
        continue;
      }
      const need = { flags: 4, option: 16, request: 28 }[this.state];
      if (this.buf.length < need) return;
      const head = this.take(need);
      const v = new DataView(head.buffer);
      if (this.state === "flags") {
        const flags = v.getUint32(0);
        if ((flags & 1) === 0 || (flags & ~3) !== 0) throw new Error(`client flags ${flags}`);
        this.noZeroes = (flags & 2) !== 0;
        this.state = "option";
      } else if (this.state === "option") {
        if (v.getBigUint64(0) !== OPTS_MAGIC) throw new Error("bad NBD option magic");
        if (++this.options > MAX_OPTIONS) throw new Error("too many NBD options");
        const option = v.getUint32(8), len = v.getUint32(12);
        if (len > MAX_OPTION) throw new Error(`NBD option of ${len} bytes`);
        if (this.buf.length < len) {
          this.buf = concat(head.slice(0, 16), this.buf); // wait for the whole option
          this.options--;
          return;
        }
        this.option(option, this.take(len));
      } else {
        if (v.getUint32(0) !== REQUEST_MAGIC) throw new Error("bad NBD request magic");
        await this.request(v.getUint16(4), v.getUint16(6), v.getBigUint64(8), v.getBigUint64(16), v.getUint32(24));
      }
    }
  }

  servesName(name) {
    return name.length === 0 || new TextDecoder().decode(name) === this.file.name;
  }

  exportInfo() {
    const p = new Uint8Array(12);
    const v = new DataView(p.buffer);
    v.setUint16(0, INFO_EXPORT);
    v.setBigUint64(2, this.size);
    v.setUint16(10, TRANSMISSION_FLAGS);
    return p;
  }

  option(option, data) {
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (option === OPT_EXPORT_NAME) {
      if (!this.servesName(data)) {
        this.state = "done";
        return;
      }
      const r = new Uint8Array(10 + (this.noZeroes ? 0 : 124));
      const v = new DataView(r.buffer);
      v.setBigUint64(0, this.size);
      v.setUint16(8, TRANSMISSION_FLAGS);
      this.send(r);
      this.state = "request";
    } else if (option === OPT_GO || option === OPT_INFO) {
      // name length u32 | name | count u16 | count × info u16
      if (data.length < 6) return this.optionReply(option, REP_ERR_INVALID);
      const nameLen = dv.getUint32(0);
      if (nameLen > data.length - 6) return this.optionReply(option, REP_ERR_INVALID);
      const count = dv.getUint16(4 + nameLen);
      if (data.length !== 6 + nameLen + 2 * count) return this.optionReply(option, REP_ERR_INVALID);
      if (!this.servesName(data.subarray(4, 4 + nameLen))) return this.optionReply(option, REP_ERR_UNKNOWN);
      this.optionReply(option, REP_INFO, this.exportInfo());
      for (let i = 0; i < count; i++) {
        if (dv.getUint16(6 + nameLen + 2 * i) === INFO_BLOCK_SIZE) {
          const p = new Uint8Array(14);
          const v = new DataView(p.buffer);
          v.setUint16(0, INFO_BLOCK_SIZE);
          v.setUint32(2, 1);
          v.setUint32(6, 2048);
          v.setUint32(10, MAX_REQUEST);
          this.optionReply(option, REP_INFO, p);
          break;
        }
      }
      this.optionReply(option, REP_ACK);
      if (option === OPT_GO) this.state = "request";
    } else if (option === OPT_LIST) {
      if (data.length !== 0) return this.optionReply(option, REP_ERR_INVALID);
      const name = new TextEncoder().encode(this.file.name);
      const p = new Uint8Array(4 + name.length);
      new DataView(p.buffer).setUint32(0, name.length);
      p.set(name, 4);
      this.optionReply(option, REP_SERVER, p);
      this.optionReply(option, REP_ACK);
    } else if (option === OPT_ABORT) {
      this.optionReply(option, REP_ACK);
      this.state = "done";
    } else if (option === OPT_STARTTLS) {
      this.optionReply(option, REP_ERR_POLICY);
    } else {
      this.optionReply(option, REP_ERR_UNSUP);
    }
  }

  async request(flags, command, handle, offset, length) {
    if (command === CMD_WRITE && length > 0) {
      this.skip = length;
      this.state = "skip";
    }
    if ((flags & ~CMD_FLAGS_KNOWN) !== 0) return this.reply(handle, EINVAL);
    if (command === CMD_READ) {
      const end = offset + BigInt(length);
      if (length === 0 || length > MAX_REQUEST || end > this.size) return this.reply(handle, EINVAL);
      let data;
      try {
        data = new Uint8Array(await this.file.slice(Number(offset), Number(end)).arrayBuffer());
      } catch (e) {
        return this.reply(handle, EIO);
      }
      if (data.length !== length) return this.reply(handle, EIO);
      this.bytesRead += length;
      this.reads += 1;
      return this.reply(handle, 0, data);
    }
    if (command === CMD_WRITE || command === CMD_TRIM || command === CMD_WRITE_ZEROES) return this.reply(handle, EPERM);
    if (command === CMD_FLUSH) return this.reply(handle, 0);
    if (command === CMD_DISC) {
      this.state = "done";
      return;
    }
    return this.reply(handle, EINVAL);
  }
}

// A medium's name as INSERT carries it: printable, at most 255 bytes.
function mediumName(name) {
  let clean = Array.from(name).filter((c) => c >= " " && c !== "\x7f").join("") || "medium";
  const enc = new TextEncoder();
  while (enc.encode(clean).length > MAX_NAME) clean = Array.from(clean).slice(0, -1).join("");
  return clean;
}

function mib(n) {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

// The page's control: a file input, an Eject button, a status line.
// Returns the state for tests: window.vmgate.media.
export function startMedia(url, { box, file, eject, status }) {
  const media = { state: "connecting", bytesRead: 0, reads: 0, name: null, size: null, close: null, error: null };
  box.hidden = false;
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  let server = null;
  const say = (text) => (status.textContent = text);
  const sendNbd = (bytes) => {
    for (let at = 0; at < bytes.length; at += MAX_NBD) {
      if (ws.readyState === WebSocket.OPEN) ws.send(message(NBD, bytes.subarray(at, at + MAX_NBD)));
    }
  };
  const fail = (why) => {
    media.error = String(why);
    say(`virtual media: ${why}`);
    ws.close();
  };
  const decoder = new Decoder({
    nbd: (bytes) => {
      if (!server) return;
      server.feed(bytes.slice()).then(() => {
        media.bytesRead = server.bytesRead;
        media.reads = server.reads;
        if (media.state === "inserted") say(`${media.name}: ${mib(media.bytesRead)} read`);
      }, (e) => fail(`NBD: ${e.message}`));
    },
    inserted: (m) => {
      media.state = "inserted";
      media.size = m.size;
      eject.disabled = false;
      say(`${media.name} inserted (${mib(m.size)})`);
    },
    ejected: (m) => {
      media.state = "ejected";
      media.bytesRead = m.bytes_read;
      media.reads = m.reads;
      server = null;
      eject.disabled = true;
      file.disabled = false;
      file.value = "";
      say(`ejected: the guest read ${mib(m.bytes_read)}`);
    },
    report: () => {},
  });
  ws.onopen = () => {
    media.state = "idle";
    file.disabled = false;
    say("no medium: pick an ISO");
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") return; // notices: none on this channel
    try {
      decoder.feed(new Uint8Array(ev.data));
    } catch (e) {
      fail(e.message);
    }
  };
  ws.onclose = (ev) => {
    media.state = "closed";
    media.close = { code: ev.code, reason: ev.reason };
    file.disabled = true;
    eject.disabled = true;
    if (!media.error) say(`virtual media closed: ${ev.reason || "connection lost"}`);
  };
  file.addEventListener("change", () => {
    const f = file.files[0];
    if (!f || !(media.state === "idle" || media.state === "ejected")) return;
    if (f.size === 0) return say(`${f.name} is empty`);
    media.state = "inserting";
    media.name = mediumName(f.name);
    media.bytesRead = 0;
    file.disabled = true;
    say(`inserting ${media.name}…`);
    ws.send(message(INSERT, new TextEncoder().encode(media.name)));
    server = new NbdServer(f, sendNbd);
  });
  eject.addEventListener("click", () => {
    if (media.state !== "inserted") return;
    media.state = "ejecting";
    eject.disabled = true;
    say("ejecting…");
    ws.send(message(EJECT, new Uint8Array(0)));
  });
  // Closing the tab would pull the medium out from under the guest.
  window.addEventListener("beforeunload", (e) => {
    if (media.state === "inserted" || media.state === "inserting" || media.state === "ejecting") {
      e.preventDefault();
      e.returnValue = "";
    }
  });
  return media;
}
