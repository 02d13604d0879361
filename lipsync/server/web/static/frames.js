// The binary frame message of /api/stream (lipsync/server/realtime/protocol.py): a 24-byte
// little-endian header <4sBBHIIII> (magic "LSRT", type 1 = JPEG, reserved byte and u16,
// frame index, presentation time in ms within the utterance, payload length, CRC-32 of the
// payload), then the JPEG.

export const HEADER_BYTES = 24;
const MAGIC = 0x5452534c; // "LSRT" read as a little-endian u32
const TYPE_JPEG = 1;

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (the zlib / PNG one) of a Uint8Array. */
export function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** {index, ptsMs, jpeg: Uint8Array} of a binary frame message; throws if it is malformed. */
export function unpackFrame(buffer) {
  if (buffer.byteLength < HEADER_BYTES) throw new Error("frame shorter than its header");
  const view = new DataView(buffer);
  const length = view.getUint32(16, true);
  if (view.getUint32(0, true) !== MAGIC || view.getUint8(4) !== TYPE_JPEG) {
    throw new Error("frame with a bad magic or type");
  }
  const jpeg = new Uint8Array(buffer, HEADER_BYTES);
  if (jpeg.length !== length) throw new Error(`frame of ${jpeg.length} bytes, header says ${length}`);
  if (crc32(jpeg) !== view.getUint32(20, true)) throw new Error("frame CRC mismatch");
  return { index: view.getUint32(8, true), ptsMs: view.getUint32(12, true), jpeg };
}
