// gRPC unary calls over node:http2 for the benchmark: the load client's channel (several HTTP/2
// connections, pre-framed bodies, status from the trailers) and the checks made on an answer.

import http2 from "node:http2";
import type { Plan } from "./workload.js";

export interface Answer {
  /** grpc-status from the trailers (or a trailers-only answer), undefined when none came. */
  readonly status: string | undefined;
  readonly message: string | undefined;
  /** The gRPC message frames as received (5-byte prefix included). */
  readonly body: Buffer;
  /** A transport failure: HTTP status, stream reset, GOAWAY, closed socket. */
  readonly error: string | undefined;
}

/** Failures counted by description, and the calls sent again after a REFUSED_STREAM. */
export class Errors {
  readonly counts: Record<string, number> = {};
  /** Not failures: the service never saw such a call (see openChannel). */
  refusedStreamsRetried = 0;
  add(description: string): void {
    this.counts[description] = (this.counts[description] ?? 0) + 1;
  }
}

/** A message behind its 5-byte gRPC prefix (not compressed). */
export function frame(body: Uint8Array): Buffer {
  const framed = Buffer.alloc(5 + body.length);
  framed.writeUInt32BE(body.length, 1);
  framed.set(body, 5);
  return framed;
}

/** Why an answer is a failure, or undefined when it is a well-formed OK. */
export function failureOf(answer: Answer): string | undefined {
  if (answer.error !== undefined) return answer.error;
  if (answer.status === undefined) return "no grpc-status";
  if (answer.status !== "0") return `grpc-status ${answer.status}: ${answer.message ?? ""}`;
  if (answer.body.length < 5 || answer.body.readUInt32BE(1) !== answer.body.length - 5) return "malformed frame";
  return undefined;
}

/** CheckConnectionResponse.reason (field 2) of a framed answer, read without decoding the rest. */
export function checkReason(framed: Buffer): number {
  let offset = 5;
  const varint = (): number => {
    let value = 0;
    let shift = 0;
    for (;;) {
      const byte = framed[offset++] ?? 0;
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80 || offset >= framed.length) return value;
      shift += 7;
    }
  };
  while (offset < framed.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === 2 && wire === 0) return varint();
    if (wire === 0) varint();
    else if (wire === 2) offset += varint();
    else if (wire === 1) offset += 8;
    else if (wire === 5) offset += 4;
    else return -1;
  }
  return 0; // absent: the proto3 default, REASON_UNSPECIFIED
}

// ---------------------------------------------------------------------------------------------
// Channels: `sessions` HTTP/2 connections, and a call that goes out on the one a slot is bound to.

export type Headers = Readonly<Record<string, string>>;

export interface Channel {
  call(slot: number, headers: Headers, body: Buffer, done: (answer: Answer) => void): void;
  close(): void;
}

export async function openChannel(plan: Pick<Plan, "url" | "path" | "sessions">, errors: Errors): Promise<Channel> {
  const sessions = await Promise.all(
    Array.from(
      { length: plan.sessions },
      () =>
        new Promise<http2.ClientHttp2Session>((resolve, reject) => {
          const session = http2.connect(plan.url);
          session.once("connect", () => resolve(session));
          session.once("error", reject);
          session.on("error", (error: Error) => errors.add(`session error: ${error.message}`));
          session.on("goaway", (code: number) => errors.add(`GOAWAY ${code}`));
        }),
    ),
  );
  const base = { ":method": "POST", ":path": plan.path, "content-type": "application/grpc", te: "trailers" };
  const objects = new WeakMap<Headers, http2.OutgoingHttpHeaders>();
  return {
    call(slot, headers, body, done) {
      let outgoing = objects.get(headers);
      if (outgoing === undefined) {
        outgoing = { ...base, ...headers };
        objects.set(headers, outgoing);
      }
      const session = sessions[slot % sessions.length] as http2.ClientHttp2Session;
      const send = () => {
        let status: string | undefined;
        let message: string | undefined;
        let httpStatus: string | undefined;
        let error: string | undefined;
        const chunks: Buffer[] = [];
        const stream = session.request(outgoing, { endStream: false });
        const read = (fields: http2.IncomingHttpHeaders) => {
          httpStatus ??= fields[":status"] === undefined ? undefined : String(fields[":status"]);
          if (fields["grpc-status"] !== undefined) {
            status = String(fields["grpc-status"]);
            message =
              fields["grpc-message"] === undefined ? undefined : decodeURIComponent(String(fields["grpc-message"]));
          }
        };
        stream.on("response", read);
        stream.on("trailers", read);
        stream.on("data", (chunk: Buffer) => chunks.push(chunk));
        stream.on("error", (cause: Error) => {
          error = `stream error: ${cause.message}`;
        });
        stream.on("close", () => {
          // Opened before this client read a lowered stream limit: refused before the service saw it,
          // so sent again at once, as grpc-js does transparently (docs/API.md, stream limits).
          const refused = stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM && httpStatus === undefined;
          if (refused && !session.closed && !session.destroyed) {
            errors.refusedStreamsRetried++;
            send();
            return;
          }
          if (error === undefined && stream.rstCode !== undefined && stream.rstCode !== 0) {
            error = `stream reset with code ${stream.rstCode}`;
          }
          if (error === undefined && httpStatus !== "200") error = `HTTP status ${httpStatus}`;
          done({ status, message, body: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks), error });
        });
        stream.end(body);
      };
      send();
    },
    close() {
      for (const session of sessions) session.close();
    },
  };
}
