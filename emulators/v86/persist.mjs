// Persistent layers for v86: parts of the guest's 9p tree kept in IndexedDB.
//
// A layer is a set of guest paths (directories). The store, its record format and its
// atomic versions are every engine's (emulators/common/persist_store.mjs); this file is
// v86's byte path: the 9p tree lives in the page, so a sync walks it here and a restore
// rebuilds it before the CPU starts. The data never passes through Python;
// pyapptron.persist (plain Python) owns the policy.

import { LayerStore, S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, FORMAT, fileRefs, newRef, validRecord }
  from "../common/persist_store.mjs";

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
    this.walking = false;
    this.chain = Promise.resolve();
  }

  static async open(fs, store, layers, notify) {
    const session = new PersistSession(fs, store, layers, notify);
    session.db = await LayerStore.open(store);
    session.watch();
    return session;
  }

  // "idle", "walk", "blobs", "commit": for tests that kill a sync halfway.
  get phase() { return this.walking ? "walk" : this.db ? this.db.phase : "idle"; }

  close() {
    if (this.onLeave) {
      document.removeEventListener("visibilitychange", this.onLeave);
      globalThis.removeEventListener("pagehide", this.onLeave);
    }
    if (this.db) this.db.close();
    this.db = null;
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
  records() { return this.db.records(); }
  blobs(refs) { return this.db.blobs(refs); }
  readBlob(ref) { return this.db.readBlob(ref); }

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
        if (record.delta) {
          // What differs from an overlay image (c2w agent-x86_64) is not a whole tree.
          report.damaged.push({ layer: layer.name, path: null, reason: "its record was made on another kind of " +
            "machine (an image's difference); it was left alone: use one store per engine and image kind" });
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
    this.walking = true;
    const pending = new Map(); // ref -> Uint8Array
    const fresh = new Map(); // inode id -> {ref, size, generation}: known once committed
    const records = {};
    let files = 0, bytes = 0;
    try {
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
    } finally {
      this.walking = false;
    }
    const written = await this.db.writeVersion(records, pending);
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
          ref = newRef();
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

  // ---- management ------------------------------------------------------------------
  reset(name) {
    return this.serial(async () => {
      this.detached.add(name);
      await this.db.reset(name);
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

  estimate() { return this.db.estimate(); }
}
