// One gzip or gunzip off the page's thread: snapshot.mjs runs several at once (a large
// state's segments, one per core).
// In: { op: "gzip" | "gunzip", data: Blob | ArrayBuffer }. Out: { data: ArrayBuffer } or
// { error }.
import { gunzip, gzip } from "./snapshot.mjs";

self.onmessage = async (ev) => {
  const { op, data } = ev.data;
  try {
    const out = op === "gzip" ? (await gzip(data)).buffer : await gunzip(data);
    self.postMessage({ data: out }, [out]);
  } catch (e) {
    self.postMessage({ error: String(e.message || e) });
  }
};
