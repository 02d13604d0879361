// The binary messages of /api/stream (lipsync/server/realtime/protocol.py): a 24-byte
// little-endian header <4sBBHIIII> (magic "LSRT", message type, reserved byte and u16,
// index, presentation time in ms, payload length, CRC-32 of the payload), then the payload.
// Patch output sends type 4, a frame of the avatar as a JPEG (index: the avatar frame), once,
// and type 5, a speech frame (index and pts within the utterance) as a patch over one.

export const HEADER_BYTES = 24;
export const TYPE_BASE = 4;
export const TYPE_PATCH = 5;
const MAGIC = 0x5452534c; // "LSRT" read as a little-endian u32
const PATCH_HEADER_BYTES = 12; // <IHHHH>: base frame, x, y, width, height

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

/** {type, index, ptsMs, payload: Uint8Array} of a binary message; throws if it is malformed. */
export function unpackMessage(buffer) {
  if (buffer.byteLength < HEADER_BYTES) throw new Error("message shorter than its header");
  const view = new DataView(buffer);
  if (view.getUint32(0, true) !== MAGIC) throw new Error("message with a bad magic");
  const length = view.getUint32(16, true);
  const payload = new Uint8Array(buffer, HEADER_BYTES);
  if (payload.length !== length) throw new Error(`message of ${payload.length} bytes, header says ${length}`);
  if (crc32(payload) !== view.getUint32(20, true)) throw new Error("message CRC mismatch");
  return { type: view.getUint8(4), index: view.getUint32(8, true), ptsMs: view.getUint32(12, true), payload };
}

/** {base, x, y, width, height, jpeg} of a patch's payload: the JPEG of the rectangle (x, y,
 * width, height) to draw over base frame `base`; width 0 and no JPEG: the base as it is. */
export function unpackPatch(payload) {
  if (payload.length < PATCH_HEADER_BYTES) throw new Error("patch shorter than its header");
  const view = new DataView(payload.buffer, payload.byteOffset, PATCH_HEADER_BYTES);
  const patch = {
    base: view.getUint32(0, true),
    x: view.getUint16(4, true),
    y: view.getUint16(6, true),
    width: view.getUint16(8, true),
    height: view.getUint16(10, true),
    jpeg: payload.subarray(PATCH_HEADER_BYTES),
  };
  if (!patch.width !== !patch.jpeg.length) throw new Error("a patch has a JPEG exactly when its width is not 0");
  return patch;
}
