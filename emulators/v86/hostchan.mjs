// The agent's shared-memory channel on v86 ("hostchan"; the layout is the one Bochs
// serves on the c2w engine, emulators/c2w/patches/0008-*, described there).
//
// Why: through virtio-console every host write becomes one 4 KiB guest buffer and every
// byte passes the guest's tty layer, which holds files to a few MB/s. Here the control
// words and the two rings sit in guest RAM that the kernel leaves alone (the backend adds
// memmap=...$BASE to the command line), so the guest moves a frame with one memcpy and JS
// reads and writes cpu.mem8 directly. v86 traps only addresses above RAM: the doorbell is
// a page there (DOORBELL). A guest write to it makes us drain guest-to-host and refill
// host-to-guest at once. The agent's tty (hvc0) stays its wake-up line: a host that fills
// the ring while the agent's "sleeping" word is set sends one byte on it.
//
// Both ends use v86's bus as its devices do, so the adapter and bench/bare_v86.mjs need no
// other hook: emulator.bus.send("hostchan-input", bytes) reaches the agent, and
// emulator.add_listener("hostchan-output", ...) hears it. (v86's bus has two ends: the
// page's, emulator.bus, and the devices', emulator.emulator_bus; a message sent on one
// reaches the listeners of the other.) Until the guest has attached, input goes to
// virtio-console (an agent without rings reads it there).

const MAGIC = 0x48435950; // "PYCH"
const C = { MAGIC: 0, VERSION: 1, H2G_OFF: 2, H2G_SIZE: 3, G2H_OFF: 4, G2H_SIZE: 5,
            H2G_HEAD: 8, H2G_TAIL: 9, G2H_HEAD: 10, G2H_TAIL: 11, SLEEPING: 12, ATTACHED: 13 };
const RING_SIZE = 1 << 20;
const H2G_OFF = 0x10000;
const G2H_OFF = H2G_OFF + RING_SIZE;
/** Bytes of guest RAM the channel needs at BASE (the backend reserves at least this). */
export const SPAN = G2H_OFF + RING_SIZE;
const MMIO_BLOCK = 1 << 17; // v86 maps I/O memory in blocks of 128 KiB
const WAKE = new Uint8Array([0x21]);

export class HostChan {
  // base: guest-physical address of the control page (in RAM); doorbell: a free block
  // above RAM. Call init() before a cold boot's first instruction (a resumed state
  // carries the control words and rings in its RAM).
  constructor(emulator, base, doorbell) {
    this.emulator = emulator;
    this.cpu = emulator.v86.cpu;
    this.base = base;
    this.pending = []; // Uint8Arrays for the guest, oldest first
    this.pendingOffset = 0; // bytes of pending[0] already in the ring
    if (base % 4096 || base + SPAN > this.cpu.memory_size[0]) {
      throw new Error(`hostchan: ${base.toString(16)} is not a page of RAM with ${SPAN} bytes after it`);
    }
    if (doorbell % MMIO_BLOCK || doorbell < this.cpu.memory_size[0]) {
      throw new Error(`hostchan: the doorbell ${doorbell.toString(16)} must be a 128 KiB block above RAM`);
    }
    const kick = () => this.service();
    this.cpu.io.mmap_register(doorbell, MMIO_BLOCK, () => 0, kick, () => 0, kick);
    this.deviceBus = emulator.emulator_bus;
    this.onInput = (data) => this.send(data);
    this.deviceBus.register("hostchan-input", this.onInput, this);
  }

  init() {
    const c = this.ctl();
    c.fill(0);
    c[C.MAGIC] = MAGIC; c[C.VERSION] = 1;
    c[C.H2G_OFF] = H2G_OFF; c[C.H2G_SIZE] = RING_SIZE;
    c[C.G2H_OFF] = G2H_OFF; c[C.G2H_SIZE] = RING_SIZE;
  }

  // A restored state brought its own rings: what was queued for the old guest is void.
  reset() {
    this.pending = [];
    this.pendingOffset = 0;
  }

  ctl() {
    // A fresh view each time: the views must follow cpu.mem8 should v86 replace it.
    const mem = this.cpu.mem8;
    return new Uint32Array(mem.buffer, mem.byteOffset + this.base, 16);
  }

  get attached() {
    const c = this.ctl();
    return c[C.MAGIC] === MAGIC && c[C.ATTACHED] !== 0;
  }

  send(data) {
    if (!this.attached) {
      this.emulator.bus.send("virtio-console0-input-bytes", data); // as the page would
      return;
    }
    this.pending.push(data);
    this.service();
  }

  service() {
    const c = this.ctl();
    if (c[C.MAGIC] !== MAGIC || !c[C.ATTACHED]) return;
    const mem = this.cpu.mem8;
    // The layout is ours (init), never re-read from guest RAM: a guest that scribbles on the
    // control page must not make us read or write outside the rings.
    const g2h = this.base + G2H_OFF, h2g = this.base + H2G_OFF, mask = RING_SIZE - 1;
    // guest -> host: everything the guest has written, copied out (the ring is reused)
    const tail = c[C.G2H_TAIL];
    const used = (c[C.G2H_HEAD] - tail) >>> 0;
    if (used > RING_SIZE) {
      this.corrupt("the guest-to-host ring claims more bytes than it holds");
      c[C.G2H_TAIL] = c[C.G2H_HEAD];
    } else if (used > 0) {
      const at = tail & mask;
      const first = Math.min(used, RING_SIZE - at);
      let out;
      if (first === used) {
        out = mem.slice(g2h + at, g2h + at + used);
      } else {
        out = new Uint8Array(used);
        out.set(mem.subarray(g2h + at, g2h + at + first));
        out.set(mem.subarray(g2h, g2h + used - first), first);
      }
      c[C.G2H_TAIL] = (tail + used) >>> 0;
      this.deviceBus.send("hostchan-output", out);
    }
    // host -> guest: as much as the ring has room for
    if (this.pending.length === 0) return;
    let head = c[C.H2G_HEAD];
    const queued = (head - c[C.H2G_TAIL]) >>> 0;
    if (queued > RING_SIZE) {
      this.corrupt("the host-to-guest ring's tail is out of range");
      return;
    }
    let room = RING_SIZE - queued;
    let moved = 0;
    while (room > 0 && this.pending.length > 0) {
      const chunk = this.pending[0];
      const at = head & mask;
      const n = Math.min(room, chunk.length - this.pendingOffset, RING_SIZE - at);
      mem.set(chunk.subarray(this.pendingOffset, this.pendingOffset + n), h2g + at);
      this.pendingOffset += n;
      if (this.pendingOffset === chunk.length) { this.pending.shift(); this.pendingOffset = 0; }
      head = (head + n) >>> 0;
      room -= n;
      moved += n;
    }
    if (moved === 0) return;
    c[C.H2G_HEAD] = head;
    if (c[C.SLEEPING]) {
      c[C.SLEEPING] = 0;
      this.emulator.bus.send("virtio-console0-input-bytes", WAKE);
    }
  }

  corrupt(what) {
    if (!this.warned) console.warn(`pyapptron hostchan: ${what}; the agent's next HELLO starts over`);
    this.warned = true;
  }

  close() {
    this.deviceBus.unregister("hostchan-input", this.onInput);
    this.reset();
  }
}
