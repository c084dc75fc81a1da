// The frame reader behind H2FrameTap: the interop suite's wire assertions (keepalive PINGs,
// GOAWAY, resets, SETTINGS limits, compressed messages) are only as good as its counting, whatever way TCP splits frames.

import { describe, expect, it } from "vitest";
import { emptyStats, FrameReader } from "./h2-frame-tap.js";

function frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId, 5);
  return Buffer.concat([header, payload]);
}

/** Big-endian 32-bit words. */
function u32(...values: number[]): Buffer {
  const bytes = Buffer.alloc(4 * values.length);
  for (const [index, value] of values.entries()) bytes.writeUInt32BE(value, 4 * index);
  return bytes;
}

const grpcMessage = (compressed: boolean, body: string) =>
  Buffer.concat([Buffer.from([compressed ? 1 : 0]), u32(body.length), Buffer.from(body)]);

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const BYTES = Buffer.concat([
  PREFACE,
  frame(0x4, 0, 0, Buffer.alloc(0)), // SETTINGS
  // SETTINGS: INITIAL_WINDOW_SIZE 65535, MAX_CONCURRENT_STREAMS 4, then an ACK
  frame(0x4, 0, 0, Buffer.from([0, 4, 0, 0, 0xff, 0xff, 0, 3, 0, 0, 0, 4])),
  frame(0x4, 0x1, 0, Buffer.alloc(0)),
  frame(0x1, 0x4, 1, Buffer.from([0x83, 0x86])), // HEADERS, END_HEADERS
  frame(0x6, 0, 0, Buffer.alloc(8)), // PING
  frame(0x6, 0x1, 0, Buffer.alloc(8)), // PING ACK
  frame(0x0, 0, 1, grpcMessage(true, "x".repeat(40))), // stream 1, compressed
  frame(0x0, 0x1, 1, grpcMessage(false, "y")), // stream 1 again: not a first message
  frame(0x0, 0x8, 3, Buffer.concat([Buffer.from([2]), grpcMessage(false, "z"), Buffer.alloc(2)])), // padded
  frame(0x3, 0, 5, u32(11)), // RST_STREAM ENHANCE_YOUR_CALM
  frame(0x7, 0, 0, u32(5, 0)), // GOAWAY NO_ERROR, last stream 5
]);

describe("H2FrameTap's frame reader", () => {
  it("counts the same frames however the bytes are split", () => {
    for (const size of [1, 2, 7, 9, 10, 64, BYTES.length]) {
      const stats = emptyStats();
      const reader = new FrameReader(stats, true);
      for (let offset = 0; offset < BYTES.length; offset += size) reader.push(BYTES.subarray(offset, offset + size));
      expect(stats, `chunks of ${size} bytes`).toEqual({
        pings: 1,
        pingAcks: 1,
        goaways: [0],
        resets: [11],
        headers: 1,
        maxConcurrentStreams: [4],
        settingsAcks: 1,
        compressedMessages: 1,
        uncompressedMessages: 1,
      });
    }
  });
});
