// What every adapter does with a snapshot's payload: the browser's own gzip, the
// checksum, and the error Python turns into pyapptron.SnapshotCorrupt. (The payload's
// inside is each emulator's own: v86's state, c2w's container of Bochs's files.)

export function snapshotError(why) {
  // The name is the pyapptron error class (pyapptron._browser.JS_ERRORS).
  return Object.assign(new Error(why), { name: "SnapshotCorrupt" });
}

// gzip (CompressionStream: the browser has no zstd compressor) of a buffer, a Blob or
// a list of parts (streamed: the parts are never joined first).
export async function gzip(data) {
  const blob = data instanceof Blob ? data : new Blob(Array.isArray(data) ? data : [data]);
  const stream = blob.stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// gzip's CRC catches a damaged payload before an emulator sees it.
export async function gunzip(data) {
  try {
    const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("gzip"));
    return await new Response(stream).arrayBuffer();
  } catch (e) {
    // The browser only says "Failed to fetch" (or the like) about a damaged stream.
    throw snapshotError("its state does not decompress: the gzip data is damaged");
  }
}

// A snapshot's payload checked against its sha256, when it has one (zstd's own checks
// do not cover every byte: stored blocks pass through as they are).
export async function checkSha256(payload, sha256) {
  if (!sha256 || !globalThis.crypto || !crypto.subtle) return;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", payload));
  const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  if (hex !== sha256) throw snapshotError("its state's checksum does not match (damaged in transit or storage)");
}

// ---- large states: segments (de)compressed in parallel -------------------------------
// gzip runs on one core at a time; a state of hundreds of MB is cut into segments that
// are gzip'd separately, each in a worker of its own, and inflated the same way:
//   SEGMENTS_MAGIC, u32 little-endian length of the JSON index [[gzip bytes, raw bytes],
//   ...], the index, then the gzip members in order.
const SEGMENTS_MAGIC = new TextEncoder().encode("PYGZSEG1");
const MIN_SEGMENT = 16 << 20;

function segmentCount(size) {
  const cores = Math.max(1, Math.min(4, globalThis.navigator?.hardwareConcurrency || 2));
  return Math.max(1, Math.min(cores, Math.ceil(size / MIN_SEGMENT)));
}

function inWorker(op, data) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL("./codec_worker.mjs", import.meta.url), { type: "module" });
    worker.onmessage = (ev) => {
      worker.terminate();
      if (ev.data.error) reject(new Error(ev.data.error));
      else resolve(new Uint8Array(ev.data.data));
    };
    worker.onerror = (e) => { worker.terminate(); reject(new Error(`the codec worker failed: ${e.message || e}`)); };
    worker.postMessage({ op, data }, data instanceof ArrayBuffer ? [data] : []);
  });
}

// Parts (buffers) -> one payload: the segments' gzip members in parallel.
export async function gzipSegments(parts) {
  const whole = new Blob(parts);
  const n = segmentCount(whole.size);
  const step = Math.ceil(whole.size / n);
  const ranges = Array.from({ length: n }, (_, i) => [i * step, Math.min(whole.size, (i + 1) * step)]);
  const members = await Promise.all(ranges.map(([a, b]) => inWorker("gzip", whole.slice(a, b))));
  const index = new TextEncoder().encode(JSON.stringify(members.map((m, i) => [m.length, ranges[i][1] - ranges[i][0]])));
  const head = new Uint8Array(SEGMENTS_MAGIC.length + 4);
  head.set(SEGMENTS_MAGIC);
  new DataView(head.buffer).setUint32(SEGMENTS_MAGIC.length, index.length, true);
  return new Uint8Array(await new Blob([head, index, ...members]).arrayBuffer());
}

// A payload -> its bytes (an ArrayBuffer): segments inflated in parallel, or one plain
// gzip stream (what gzip() makes).
export async function gunzipSegments(payload) {
  const bytes = payload instanceof Uint8Array ? payload : new Uint8Array(payload);
  if (!SEGMENTS_MAGIC.every((b, i) => bytes[i] === b)) return gunzip(bytes);
  let index;
  try {
    const length = new DataView(bytes.buffer, bytes.byteOffset).getUint32(SEGMENTS_MAGIC.length, true);
    const at = SEGMENTS_MAGIC.length + 4;
    index = JSON.parse(new TextDecoder().decode(bytes.subarray(at, at + length)));
    let offset = at + length;
    const size = (n) => Number.isSafeInteger(n) && n >= 0;
    index = index.map(([packed, raw]) => {
      if (!size(packed) || !size(raw)) throw new Error("size");
      const member = [offset, packed, raw];
      offset += packed;
      return member;
    });
    if (offset !== bytes.length) throw new Error("length");
  } catch (e) {
    throw snapshotError("its state's segment index is damaged");
  }
  let inflated;
  try {
    inflated = await Promise.all(index.map(([offset, packed]) => inWorker("gunzip", bytes.slice(offset, offset + packed).buffer)));
  } catch (e) {
    throw snapshotError("its state does not decompress: the gzip data is damaged");
  }
  if (inflated.some((part, i) => part.length !== index[i][2])) throw snapshotError("its state is cut short");
  const out = new Uint8Array(inflated.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of inflated) {
    out.set(part, at);
    at += part.length;
  }
  return out.buffer;
}
