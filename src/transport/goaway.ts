// Closing an HTTP/2 connection without refusing a stream the server has read, as grpc-go's graceful
// stop does. A plain GOAWAY names the last stream processed when it is queued, and node sends it a
// moment later: a stream read in between is served, yet the client is told it was refused (it sees
// "GOAWAY received", without an ErrorInfo). Instead: a GOAWAY with the highest stream id (the
// client opens no new stream, and nothing is refused yet), then a PING; once its answer is back,
// the real GOAWAY, naming the last stream processed, which is then every stream the server read.
//
// What no GOAWAY from node can do: nghttp2 ignores every new stream once it has sent any GOAWAY
// (its "shutdown notice", the first step without that, is not exposed by node), so a stream that
// was on the wire as the first GOAWAY left is dropped and named refused by the second. Nor can a
// server stop a client from starting a call on the connection in the instant it reads the GOAWAY.
// gRPC clients resend both kinds themselves (transparent retry), unless retries are off; for those,
// the drain reports NOT_SERVING and gives clients that watch health time to leave first (server.ts).

import http2 from "node:http2";

const MAX_STREAM_ID = 2 ** 31 - 1;
/**
 * A peer that does not answer the PING by then gets the real GOAWAY anyway: longer than a round
 * trip, and short because node's own client, once it has read a GOAWAY with no stream of its own
 * open, stops answering (it is leaving), which would otherwise hold every drain this long.
 */
const PING_WAIT_MS = 500;

/** GOAWAY in two steps (see above); streams already started run to completion. */
export function closeGracefully(session: http2.ServerHttp2Session): void {
  if (session.closed || session.destroyed) return;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    clearTimeout(timer);
    if (!session.closed && !session.destroyed) session.close();
  };
  try {
    session.goaway(http2.constants.NGHTTP2_NO_ERROR, MAX_STREAM_ID);
    // The callback runs on the answer, or with an error when the session ends first.
    if (!session.ping(close)) {
      close();
      return;
    }
  } catch {
    close();
    return;
  }
  timer = setTimeout(close, PING_WAIT_MS).unref();
}
