// Persistent layers for v86: parts of the guest's 9p tree kept in IndexedDB.
//
// A layer is a set of guest paths (directories). Its committed version is one record
// in the store's "layers" object store: the entries of those trees, in walk order,
// [path, mode, uid, gid, mtime, size, ref], where ref names a record in "blobs" (a
// regular file's bytes) or is a symlink's target. A sync writes the new files' blobs
// first, then swaps the layer records and drops the blobs no record names, in ONE
// transaction: a tab killed at any point leaves either the old version or the new
// one, never a mix. The data never passes through Python; pyapptron.persist (plain
// Python) owns the policy, this file the bytes.

const S_IFMT = 0o170000, S_IFDIR = 0o040000, S_IFREG = 0o100000, S_IFLNK = 0o120000;
const FORMAT = 1;
// Blobs are written in transactions of about this many bytes (one huge transaction
// holds all of its data in memory until it commits).
const BLOB_BATCH_BYTES = 32 << 20;

const request = (req) => new Promise((resolve, reject) => {
  req.onsuccess = () => resolve(req.result);
  req.onerror = () => reject(req.error);
});
const finished = (tx) => new Promise((resolve, reject) => {
  tx.oncomplete = () => resolve();
  tx.onerror = () => reject(tx.error);
  tx.onabort = () => reject(tx.error || new DOMException("the transaction was aborted", "AbortError"));
});

function typedError(err) {
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

const uid = () => (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);
const dirname = (p) => p.slice(0, p.lastIndexOf("/")) || "/";
const basename = (p) => p.slice(p.lastIndexOf("/") + 1);

export class PersistSession {
  // layers: [{name, paths}], outer layers first; notify(): called (debounced by Python) on a change.
  constructor(fs, store, layers, notify) {
    this.fs = fs;
    this.store = store;
    this.layers = layers;
    this.notify = notify;
    this.roots = new Set(layers.flatMap((l) => l.paths));
    this.known = new Map(); // inode id -> {ref, size}: file data already in the store
    // inode id -> count of data writes: a write that lands while a sync reads the file
    // must not let the sync call its (older) copy "known".
    this.generation = new Map();
    this.detached = new Set(); // layers reset in this session: no longer synced
    this.quiet = false;
    this.dirty = false;
    this.phase = "idle";
    this.chain = Promise.resolve();
  }

  static async open(fs, store, layers, notify) {
    const session = new PersistSession(fs, store, layers, notify);
    session.release = await holdLock(store);
    try {
      session.db = await openDb(store);
    } catch (e) {
      session.release();
      throw e;
    }
    session.watch();
    return session;
  }

  close() {
    if (this.onLeave) {
      document.removeEventListener("visibilitychange", this.onLeave);
      globalThis.removeEventListener("pagehide", this.onLeave);
    }
    if (this.db) this.db.close();
    this.db = null;
    if (this.release) this.release();
    this.release = null;
  }

  // Every guest write through 9p ends in one of these: wrap them on this instance.
  watch() {
    const fs = this.fs;
    const dataChanged = ["Write", "ChangeSize", "set_data", "DeleteData"];
    const treeChanged = ["CreateDirectory", "CreateFile", "CreateSymlink", "CreateNode", "Rename", "Unlink", "Link"];
    for (const name of [...dataChanged, ...treeChanged]) {
      const original = fs[name];
      const data = dataChanged.includes(name);
      fs[name] = (...args) => {
        if (data) {
          this.known.delete(args[0]);
          this.generation.set(args[0], (this.generation.get(args[0]) || 0) + 1);
        }
        if (!this.quiet && !this.dirty) {
          this.dirty = true; // one notice per dirty period, not one per 9p write
          this.notify();
        }
        return original.apply(fs, args);
      };
    }
    // Leaving the page: start a sync now (best effort; only a finished sync() is a promise).
    if (globalThis.document && globalThis.addEventListener) {
      this.onLeave = () => {
        if (document.visibilityState === "hidden" && this.db && this.dirty) this.sync().catch(() => {});
      };
      document.addEventListener("visibilitychange", this.onLeave);
      globalThis.addEventListener("pagehide", this.onLeave);
    }
  }

  serial(fn) {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => {});
    return next;
  }

  // ---- reading the store -------------------------------------------------------
  async records() {
    const tx = this.db.transaction("layers", "readonly");
    const os = tx.objectStore("layers");
    const [keys, values] = await Promise.all([request(os.getAllKeys()), request(os.getAll())]);
    const out = {};
    keys.forEach((k, i) => { out[k] = values[i]; });
    return out;
  }

  async blobs(refs) {
    const out = new Map();
    if (!refs.length) return out;
    const tx = this.db.transaction("blobs", "readonly");
    const os = tx.objectStore("blobs");
    await Promise.all(refs.map(async (ref) => { out.set(ref, await request(os.get(ref))); }));
    return out;
  }

  async readBlob(ref) {
    const found = (await this.blobs([ref])).get(ref);
    return found instanceof Uint8Array ? found : null;
  }

  // After the emulator's 9p tree was replaced (a snapshot restored in place): what this
  // session knew of inodes is about another tree.
  forgetTree() {
    this.known.clear();
    this.generation.clear();
  }

  // ---- restore at boot (before the guest runs) ------------------------------------
  async restore() {
    const report = { layers: {}, damaged: [] };
    let records;
    try {
      records = await this.records();
    } catch (e) {
      report.damaged.push({ layer: null, path: null, reason: `the store's layer records cannot be read: ${e}` });
      return report;
    }
    this.quiet = true;
    try {
      for (const layer of this.layers) {
        // A layer's directories exist from the first boot on, stored or not (an image need
        // not have /persist).
        for (const root of layer.paths) if (this.lookup(root) === -1) this.mkdirs(root);
        const record = records[layer.name];
        if (record === undefined) { report.layers[layer.name] = { files: 0, bytes: 0, restored: false }; continue; }
        if (!validRecord(record)) {
          report.damaged.push({ layer: layer.name, path: null, reason: "its record is not a layer record (damaged)" });
          report.layers[layer.name] = { files: 0, bytes: 0, restored: false };
          continue;
        }
        const blobs = await this.blobs(fileRefs(record.entries));
        report.layers[layer.name] = this.applyRecord(layer, record, blobs, report.damaged);
      }
    } finally {
      this.quiet = false;
    }
    return report;
  }

  // Put a record's entries into the live tree (blobs: ref -> bytes), replacing what is there.
  applyRecord(layer, record, blobs, damaged) {
    const fs = this.fs;
    for (const root of layer.paths) this.emptyTree(root);
    const ids = new Map();
    let files = 0, bytes = 0;
    for (const entry of record.entries) {
      const [path, mode, uidv, gidv, mtime, size, ref] = entry;
      const type = mode & S_IFMT;
      if (layer.paths.length && !layer.paths.some((r) => path === r || path.startsWith(r === "/" ? "/" : r + "/"))) {
        continue; // the layer's paths changed since this was saved
      }
      let id = ids.get(path);
      if (id === undefined && this.roots.has(path)) id = this.mkdirs(path);
      if (id === undefined) {
        let parent = ids.get(dirname(path)) ?? this.lookup(dirname(path));
        if (parent === -1) parent = this.mkdirs(dirname(path)); // an archive may leave out directories
        const existing = fs.Search(parent, basename(path));
        const bothDirs = existing !== -1 && type === S_IFDIR && (fs.inodes[existing].mode & S_IFMT) === S_IFDIR;
        if (existing !== -1 && !bothDirs) this.removeTree(parent, basename(path));
        if (bothDirs) id = existing;
        else if (type === S_IFDIR) id = fs.CreateDirectory(basename(path), parent);
        else if (type === S_IFLNK) id = fs.CreateSymlink(basename(path), parent, String(ref));
        else if (type === S_IFREG) {
          let data = new Uint8Array(0);
          if (size > 0) {
            const blob = blobs.get(ref);
            if (!(blob instanceof Uint8Array) || blob.length !== size) {
              damaged.push({ layer: layer.name, path, reason: blob === undefined ? "its data is missing" : "its data is damaged" });
              continue;
            }
            data = blob;
          }
          id = fs.CreateFile(basename(path), parent);
          fs.inodedata[id] = data;
          if (size > 0 && layer.stored !== false) this.known.set(id, { ref, size });
          files += 1;
          bytes += size;
        } else continue;
      }
      const inode = fs.inodes[id];
      inode.mode = mode;
      inode.uid = uidv;
      inode.gid = gidv;
      inode.mtime = inode.ctime = inode.atime = mtime;
      if (type === S_IFREG) inode.size = size;
      ids.set(path, id);
    }
    return { files, bytes, restored: true, committed: record.committed };
  }

  lookup(path) { return this.fs.SearchPath(path).id; }

  mkdirs(path) {
    let id = 0;
    for (const name of path.split("/").filter(Boolean)) {
      const next = this.fs.Search(id, name);
      id = next === -1 ? this.fs.CreateDirectory(name, id) : next;
    }
    return id;
  }

  // Delete a directory's contents, except other layers' roots (and what leads to them).
  emptyTree(root) {
    const id = this.lookup(root);
    if (id === -1 || (this.fs.inodes[id].mode & S_IFMT) !== S_IFDIR) return;
    for (const name of this.fs.GetChildren(id)) {
      const path = `${root === "/" ? "" : root}/${name}`;
      if (this.roots.has(path)) continue;
      if ([...this.roots].some((r) => r.startsWith(path + "/"))) this.emptyTree(path);
      else this.removeTree(id, name);
    }
  }

  removeTree(parent, name) {
    const fs = this.fs;
    const id = fs.Search(parent, name);
    if (id === -1) return;
    if ((fs.inodes[id].mode & S_IFMT) === S_IFDIR) {
      for (const child of fs.GetChildren(id)) this.removeTree(id, child);
    }
    fs.Unlink(parent, name);
    delete fs.inodedata[id];
  }

  // ---- sync --------------------------------------------------------------------
  sync() { return this.serial(() => this.syncNow()); }

  async syncNow() {
    const started = performance.now();
    this.dirty = false;
    this.phase = "walk"; // then "blobs", "commit", "idle": for tests that kill a sync halfway
    try {
      return await this.syncSteps(started);
    } finally {
      this.phase = "idle";
    }
  }

  async syncSteps(started) {
    const fs = this.fs;
    const pending = new Map(); // ref -> Uint8Array
    const fresh = new Map(); // inode id -> {ref, size, generation}: known once committed
    const records = {};
    let files = 0, bytes = 0, written = 0;
    for (const layer of this.layers) {
      if (this.detached.has(layer.name)) continue;
      const entries = [];
      for (const root of layer.paths) {
        const id = this.lookup(root);
        if (id === -1) continue;
        await this.walk(root, id, entries, pending, fresh, root);
      }
      for (const e of entries) if ((e[1] & S_IFMT) === S_IFREG) { files += 1; bytes += e[5]; }
      records[layer.name] = { format: FORMAT, paths: layer.paths, entries, committed: Date.now() };
    }
    // The bytes first, in batches; nothing names them until the commit below.
    let batch = [], batchBytes = 0;
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
    }
    for (const [id, info] of fresh) {
      if ((this.generation.get(id) || 0) === info.generation) this.known.set(id, { ref: info.ref, size: info.size });
    }
    return { files, bytes, written, blobs: pending.size, seconds: (performance.now() - started) / 1000 };
  }

  async walk(path, id, entries, pending, fresh, root) {
    const fs = this.fs;
    const inode = fs.inodes[id];
    const type = inode.mode & S_IFMT;
    let ref = null;
    let size = 0;
    if (type === S_IFREG) {
      size = inode.size;
      if (size > 0) {
        const known = this.known.get(id);
        if (known && known.size === size) ref = known.ref;
        else {
          const generation = this.generation.get(id) || 0;
          const data = await fs.get_data(id, 0, size);
          ref = uid();
          pending.set(ref, data ? data.slice(0, size) : new Uint8Array(size));
          fresh.set(id, { ref, size, generation });
        }
      }
    } else if (type === S_IFLNK) {
      ref = inode.symlink;
    } else if (type !== S_IFDIR) {
      return; // sockets, fifos, devices: not kept
    }
    entries.push([path, inode.mode, inode.uid, inode.gid, inode.mtime, size, ref]);
    if (type === S_IFDIR) {
      for (const name of [...inode.direntries.keys()].sort()) {
        if (name === "." || name === "..") continue;
        const child = `${path === "/" ? "" : path}/${name}`;
        if (child !== root && this.roots.has(child)) continue; // another layer's
        await this.walk(child, inode.direntries.get(name), entries, pending, fresh, root);
      }
    }
  }

  // Swap layer records (a null record deletes the layer) and drop unnamed blobs, atomically.
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

  // ---- management ------------------------------------------------------------------
  reset(name) {
    return this.serial(async () => {
      this.detached.add(name);
      await this.commit({}, [name]);
    });
  }

  // Write entries (blobs: a Map ref -> bytes) into the live tree, replacing what is there.
  importEntries(entries, blobs) {
    return this.serial(async () => {
      const damaged = [];
      this.quiet = true;
      try {
        // Not stored yet: the files stay unknown, so the next sync writes them.
        this.applyRecord({ name: "import", paths: [], stored: false }, { entries }, blobs, damaged);
      } finally {
        this.quiet = false;
      }
      return damaged;
    });
  }

  // ---- the live tree, for Python in the page (no guest agent involved) -------------------
  async readLive(path) {
    const id = this.lookup(path);
    if (id === -1) return null;
    const inode = this.fs.inodes[id];
    if ((inode.mode & S_IFMT) !== S_IFREG) throw new Error(`IsADirectoryError: ${path} is not a regular file`);
    const data = inode.size ? await this.fs.get_data(id, 0, inode.size) : null;
    return data ? data.slice(0, inode.size) : new Uint8Array(0);
  }

  async writeLive(path, data, mode) {
    const parent = this.lookup(dirname(path));
    if (parent === -1) return false;
    let id = this.fs.Search(parent, basename(path));
    if (id !== -1 && (this.fs.inodes[id].mode & S_IFMT) !== S_IFREG) throw new Error(`IsADirectoryError: ${path} is not a regular file`);
    if (id === -1) id = this.fs.CreateFile(basename(path), parent);
    const inode = this.fs.inodes[id];
    await this.fs.set_data(id, data.slice());
    inode.size = data.length;
    inode.mode = S_IFREG | mode;
    inode.mtime = inode.ctime = Math.round(Date.now() / 1000);
    return true;
  }

  async estimate() {
    if (!globalThis.navigator || !navigator.storage || !navigator.storage.estimate) return null;
    const { usage, quota } = await navigator.storage.estimate();
    return { usage, quota };
  }
}

// The blobs a record's entries name (regular files with bytes).
const fileRefs = (entries) => entries.filter((e) => (e[1] & S_IFMT) === S_IFREG && e[5] > 0).map((e) => e[6]);

function validRecord(record) {
  return record && typeof record === "object" && record.format === FORMAT && Array.isArray(record.entries)
    && Array.isArray(record.paths) && record.entries.every((e) => Array.isArray(e) && e.length === 7
      && typeof e[0] === "string" && Number.isInteger(e[1]) && Number.isInteger(e[5]));
}
