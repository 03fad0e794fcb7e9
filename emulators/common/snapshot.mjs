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
