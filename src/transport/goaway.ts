// Closing an HTTP/2 connection without refusing a stream that is already on the wire, as grpc-go's
// graceful stop does. A plain GOAWAY names the last stream the server has processed, so a request
// the client sent just before it read the GOAWAY is refused (the client sees "GOAWAY received",
// without an ErrorInfo, and only retries if its policy says so). Instead: a GOAWAY with the highest
// stream id (the client opens no new stream, but nothing is refused yet), then a PING: once its
// answer is back, every stream the client sent before it read that GOAWAY has arrived. Only then
// the real GOAWAY, naming the last stream processed, which is now every stream the client sent.

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
