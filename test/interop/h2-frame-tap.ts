// A TCP proxy that passes every byte through unchanged and reads the HTTP/2 frame headers going
// each way, so that an interop test can say what the client and the service really put on the
// wire: keepalive PINGs and their ACKs, GOAWAY and RST_STREAM error codes, the HEADERS frames and
// the concurrent-stream limits that SETTINGS announced, and whether each stream's first gRPC
// message was compressed. It understands framing only (no HPACK).

import { TcpProxy } from "../support/tcp-proxy.js";

const CLIENT_PREFACE_BYTES = 24;
const FRAME_HEADER_BYTES = 9;
const FRAME_DATA = 0x0;
const FRAME_HEADERS = 0x1;
const FRAME_SETTINGS = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3;
/** Bytes of one SETTINGS parameter: a 16-bit identifier and a 32-bit value. */
const SETTING_BYTES = 6;
const FRAME_RST_STREAM = 0x3;
const FRAME_PING = 0x6;
const FRAME_GOAWAY = 0x7;
const FLAG_ACK = 0x1;
const FLAG_PADDED = 0x8;

/** What one direction (client to service, or service to client) carried. */
export interface DirectionStats {
  /** PING frames that asked for an answer. */
  pings: number;
  /** PING frames that answered one. */
  pingAcks: number;
  /** Error codes of the GOAWAY frames sent. */
  goaways: number[];
  /** Error codes of the RST_STREAM frames sent. */
  resets: number[];
  /** HEADERS frames sent (requests, responses and trailers). */
  headers: number;
  /** SETTINGS_MAX_CONCURRENT_STREAMS of each SETTINGS frame that set it, in order. */
  maxConcurrentStreams: number[];
  /** SETTINGS frames that acknowledged the peer's. */
  settingsAcks: number;
  /** Streams whose first gRPC message had the compressed flag set, and those whose did not. */
  compressedMessages: number;
  uncompressedMessages: number;
}

export function emptyStats(): DirectionStats {
  return {
    pings: 0,
    pingAcks: 0,
    goaways: [],
    resets: [],
    headers: 0,
    maxConcurrentStreams: [],
    settingsAcks: 0,
    compressedMessages: 0,
    uncompressedMessages: 0,
  };
}

/** Reads frames from a byte stream that may split them anywhere; only the bytes it needs are kept. */
export class FrameReader {
  private header = Buffer.alloc(0);
  private type = 0;
  private flags = 0;
  private streamId = 0;
  private remaining = 0;
  /** The start of the current frame's payload, up to what is needed to classify it. */
  private payloadStart = Buffer.alloc(0);
  private wanted = 0;
  private prefaceLeft: number;
  private readonly streamsWithData = new Set<number>();

  constructor(
    readonly stats: DirectionStats,
    skipClientPreface: boolean,
  ) {
    this.prefaceLeft = skipClientPreface ? CLIENT_PREFACE_BYTES : 0;
  }

  push(chunk: Buffer): void {
    let offset = 0;
    if (this.prefaceLeft > 0) {
      offset = Math.min(this.prefaceLeft, chunk.length);
      this.prefaceLeft -= offset;
    }
    while (offset < chunk.length) {
      if (this.remaining === 0 && this.header.length < FRAME_HEADER_BYTES) {
        const take = Math.min(FRAME_HEADER_BYTES - this.header.length, chunk.length - offset);
        this.header = Buffer.concat([this.header, chunk.subarray(offset, offset + take)]);
        offset += take;
        if (this.header.length === FRAME_HEADER_BYTES) this.startFrame();
        continue;
      }
      const take = Math.min(this.remaining, chunk.length - offset);
      if (this.payloadStart.length < this.wanted) {
        const keep = Math.min(take, this.wanted - this.payloadStart.length);
        this.payloadStart = Buffer.concat([this.payloadStart, chunk.subarray(offset, offset + keep)]);
      }
      this.remaining -= take;
      offset += take;
      if (this.remaining === 0) this.endFrame();
    }
  }

  private startFrame(): void {
    this.remaining = this.header.readUIntBE(0, 3);
    this.type = this.header[3] as number;
    this.flags = this.header[4] as number;
    this.streamId = this.header.readUInt32BE(5) & 0x7fffffff;
    this.payloadStart = Buffer.alloc(0);
    // DATA: pad length and the gRPC compressed flag; RST_STREAM: the code; GOAWAY: the code after
    // the last stream id; SETTINGS: all of it (a few parameters).
    this.wanted =
      { [FRAME_DATA]: 2, [FRAME_RST_STREAM]: 4, [FRAME_GOAWAY]: 8, [FRAME_SETTINGS]: this.remaining }[this.type] ?? 0;
    if (this.remaining === 0) this.endFrame();
  }

  private endFrame(): void {
    const payload = this.payloadStart;
    switch (this.type) {
      case FRAME_PING:
        if ((this.flags & FLAG_ACK) !== 0) this.stats.pingAcks++;
        else this.stats.pings++;
        break;
      case FRAME_GOAWAY:
        if (payload.length >= 8) this.stats.goaways.push(payload.readUInt32BE(4));
        break;
      case FRAME_HEADERS:
        this.stats.headers++;
        break;
      case FRAME_SETTINGS:
        if ((this.flags & FLAG_ACK) !== 0) this.stats.settingsAcks++;
        for (let at = 0; at + SETTING_BYTES <= payload.length; at += SETTING_BYTES) {
          if (payload.readUInt16BE(at) === SETTINGS_MAX_CONCURRENT_STREAMS) {
            this.stats.maxConcurrentStreams.push(payload.readUInt32BE(at + 2));
          }
        }
        break;
      case FRAME_RST_STREAM:
        if (payload.length >= 4) this.stats.resets.push(payload.readUInt32BE(0));
        break;
      case FRAME_DATA: {
        const flagAt = (this.flags & FLAG_PADDED) !== 0 ? 1 : 0;
        if (payload.length > flagAt && !this.streamsWithData.has(this.streamId)) {
          this.streamsWithData.add(this.streamId);
          if (((payload[flagAt] as number) & 0x1) !== 0) this.stats.compressedMessages++;
          else this.stats.uncompressedMessages++;
        }
        break;
      }
    }
    this.header = Buffer.alloc(0);
  }
}

export class H2FrameTap {
  readonly fromClient: DirectionStats = emptyStats();
  readonly fromService: DirectionStats = emptyStats();
  /** Client connections accepted, each relayed on a connection of its own to the service. */
  connections = 0;
  private readonly proxy: TcpProxy;

  private constructor(targetPort: number) {
    this.proxy = new TcpProxy("127.0.0.1", targetPort, (client, upstream) => {
      this.connections++;
      const fromClient = new FrameReader(this.fromClient, true);
      const fromService = new FrameReader(this.fromService, false);
      client.on("data", (chunk: Buffer) => fromClient.push(chunk));
      upstream.on("data", (chunk: Buffer) => fromService.push(chunk));
    });
  }

  /** Listens on an ephemeral 127.0.0.1 port and relays to the service on `targetPort`. */
  static async start(targetPort: number): Promise<H2FrameTap> {
    const tap = new H2FrameTap(targetPort);
    await tap.proxy.start();
    return tap;
  }

  /** "127.0.0.1:<port>" */
  get address(): string {
    return `127.0.0.1:${this.proxy.port}`;
  }

  /** Holds back every byte either way (the frames are still counted) until thaw(): a slow link. */
  freeze(): void {
    this.proxy.freeze();
  }

  thaw(): void {
    this.proxy.thaw();
  }

  close(): Promise<void> {
    return this.proxy.cut();
  }
}
