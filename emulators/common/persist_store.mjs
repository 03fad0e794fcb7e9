// The persistent layers' store in IndexedDB, the same on every engine.
//
// A store is one database per name (`pyapptron-persist:NAME`) in the page origin's
// IndexedDB. A layer's committed version is one record in "layers": the entries of its
// trees, in walk order, [path, mode, uid, gid, mtime, size, ref], where ref names a
// record in "blobs" (a regular file's bytes) or is a symlink's target. writeVersion()
// puts the new files' blobs first, then swaps the layer records and drops the blobs no
// record names, in ONE transaction: a tab killed at any point leaves either the old
// version or the new one, never a mix. Who fills the records is the engine's: v86 walks
// its 9p tree in the page (emulators/v86/persist.mjs); c2w asks the guest agent
// (pyapptron/persist_guest.py). pyapptron.persist (plain Python) owns the policy.

export const S_IFMT = 0o170000, S_IFDIR = 0o040000, S_IFREG = 0o100000, S_IFLNK = 0o120000;
export const FORMAT = 1;
// Blobs are written in transactions of about this many bytes (one huge transaction
// holds all of its data in memory until it commits).
const BLOB_BATCH_BYTES = 32 << 20;

export const request = (req) => new Promise((resolve, reject) => {
  req.onsuccess = () => resolve(req.result);
  req.onerror = () => reject(req.error);
});
const finished = (tx) => new Promise((resolve, reject) => {
  tx.oncomplete = () => resolve();
  tx.onerror = () => reject(tx.error);
  tx.onabort = () => reject(tx.error || new DOMException("the transaction was aborted", "AbortError"));
});

export function typedError(err) {
  // A JS error's name is the pyapptron error class it becomes (pyapptron._browser.JS_ERRORS).
  if (err && err.name === "QuotaExceededError") {
    return Object.assign(new Error(err.message), { name: "PersistQuotaExceeded" });
  }
  return err;
}

export function dbName(store) { return `pyapptron-persist:${store}`; }

async function openDb(store) {
  const req = indexedDB.open(dbName(store), 1);
  req.onupgradeneeded = () => {
    req.result.createObjectStore("blobs");
    req.result.createObjectStore("layers");
  };
  return await request(req);
}

// One tab (or machine) at a time per store: a second writer would drop the first's blobs.
async function holdLock(store) {
  if (!globalThis.navigator || !navigator.locks) return () => {};
  let release;
  const held = new Promise((resolve) => { release = resolve; });
  const got = await new Promise((resolve) => {
    navigator.locks.request(dbName(store), { ifAvailable: true }, (lock) => {
      resolve(lock !== null);
      return lock ? held : undefined;
    });
  });
  if (!got) {
    throw Object.assign(new Error(`the persist store '${store}' is in use by another machine (in this page or ` +
      "another tab): shut that one down, or boot with another store name"), { name: "PersistLocked" });
  }
  return release;
}

export const newRef = () => (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);

// The blobs a record's entries name (regular files with bytes).
export const fileRefs = (entries) => entries.filter((e) => (e[1] & S_IFMT) === S_IFREG && e[5] > 0).map((e) => e[6]);

export function validRecord(record) {
  return record && typeof record === "object" && record.format === FORMAT && Array.isArray(record.entries)
    && Array.isArray(record.paths) && record.entries.every((e) => Array.isArray(e) && e.length === 7
      && typeof e[0] === "string" && Number.isInteger(e[1]) && Number.isInteger(e[5]));
}

export class LayerStore {
  constructor(name) {
    this.name = name;
    this.db = null;
    this.release = null;
    // "idle", or where a writeVersion() is: "blobs", "commit" (tests kill a sync halfway)
    this.phase = "idle";
  }

  // Holds the store's lock (PersistLocked if another machine has it), then opens it.
  static async open(name) {
    const store = new LayerStore(name);
    store.release = await holdLock(name);
    try {
      store.db = await openDb(name);
    } catch (e) {
      store.release();
      throw e;
    }
    return store;
  }

  close() {
    if (this.db) this.db.close();
    this.db = null;
    if (this.release) this.release();
    this.release = null;
  }

  async records() {
    const tx = this.db.transaction("layers", "readonly");
    const os = tx.objectStore("layers");
    const [keys, values] = await Promise.all([request(os.getAllKeys()), request(os.getAll())]);
    const out = {};
    keys.forEach((k, i) => { out[k] = values[i]; });
    return out;
  }

  // refs -> a Map ref -> what the store holds (a Uint8Array, or anything else if damaged).
  async blobs(refs) {
    const out = new Map();
    if (!refs.length) return out;
    const tx = this.db.transaction("blobs", "readonly");
    const os = tx.objectStore("blobs");
    await Promise.all(refs.map(async (ref) => { out.set(ref, await request(os.get(ref))); }));
    return out;
  }

  // refs -> {data: their bytes one after another, sizes: each one's length, -1 where the
  // store holds no bytes (damaged)}: one crossing into Python for a whole layer, not one
  // per file.
  async blobsPacked(refs) {
    const found = await this.blobs(refs);
    const sizes = refs.map((ref) => { const b = found.get(ref); return b instanceof Uint8Array ? b.length : -1; });
    const data = new Uint8Array(sizes.reduce((n, size) => n + Math.max(size, 0), 0));
    let pos = 0;
    refs.forEach((ref, i) => { if (sizes[i] > 0) { data.set(found.get(ref), pos); pos += sizes[i]; } });
    return { data, sizes };
  }

  async readBlob(ref) {
    const found = (await this.blobs([ref])).get(ref);
    return found instanceof Uint8Array ? found : null;
  }

  // A new version: `pending` (ref -> Uint8Array) first, in batches that nothing names
  // yet, then the records, atomically. Returns the bytes written.
  async writeVersion(records, pending) {
    let batch = [], batchBytes = 0, written = 0;
    const flush = async () => {
      if (!batch.length) return;
      const tx = this.db.transaction("blobs", "readwrite");
      const os = tx.objectStore("blobs");
      for (const [ref, data] of batch) os.put(data, ref);
      await finished(tx);
      batch = [];
      batchBytes = 0;
    };
    this.phase = "blobs";
    try {
      for (const [ref, data] of pending) {
        batch.push([ref, data]);
        batchBytes += data.length;
        written += data.length;
        if (batchBytes >= BLOB_BATCH_BYTES) await flush();
      }
      await flush();
      this.phase = "commit";
      await this.commit(records, []);
    } catch (e) {
      // What the store had committed before stays; the blobs written here are dropped by the next commit.
      throw typedError(e);
    } finally {
      this.phase = "idle";
    }
    return written;
  }

  // writeVersion with the new files' bytes as pieces of one buffer (what a guest sent in
  // one stream): one crossing from Python, each piece copied out here (IndexedDB would
  // keep a view's whole buffer).
  writeVersionPacked(records, data, refs, offsets, sizes) {
    const pending = new Map();
    refs.forEach((ref, i) => pending.set(ref, data.slice(offsets[i], offsets[i] + sizes[i])));
    return this.writeVersion(records, pending);
  }

  // Swap layer records (a deleted name drops the layer) and drop unnamed blobs, atomically.
  async commit(records, deleted) {
    const tx = this.db.transaction(["layers", "blobs"], "readwrite");
    const layersOs = tx.objectStore("layers");
    const blobsOs = tx.objectStore("blobs");
    for (const [name, record] of Object.entries(records)) layersOs.put(record, name);
    for (const name of deleted) layersOs.delete(name);
    const [values, blobKeys] = await Promise.all([request(layersOs.getAll()), request(blobsOs.getAllKeys())]);
    const named = new Set(values.filter(validRecord).flatMap((record) => fileRefs(record.entries)));
    for (const key of blobKeys) if (!named.has(key)) blobsOs.delete(key);
    await finished(tx);
  }

  // Forget one layer (the others stay).
  reset(name) { return this.commit({}, [name]); }

  async estimate() {
    if (!globalThis.navigator || !navigator.storage || !navigator.storage.estimate) return null;
    const { usage, quota } = await navigator.storage.estimate();
    return { usage, quota };
  }
}
