// TLS on the one port, and the caller identity a client certificate carries.
//
// With a certificate configured, every accepted TCP connection is handed to a tls.Server that never
// listens itself; it negotiates ALPN `h2` or `http/1.1` and hands the decrypted socket back, to be
// given to the same HTTP/2 or HTTP/1.1 server that cleartext connections reach. With a client CA,
// certificates are required and verified (tls.Server refuses the handshake otherwise), and the
// SPIFFE ID in the verified certificate's URI SAN is kept on the socket, for the pipeline to read
// through RequestMeta.peerSpiffeId(). New credentials replace the secure context for connections
// accepted from then on; established ones keep theirs.

import { readFileSync } from "node:fs";
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import type { Socket } from "node:net";
import tls from "node:tls";
import { createContextKey, createContextValues } from "@connectrpc/connect";
import type { TlsFiles } from "../config/config.js";

export interface TlsCredentials {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer | undefined;
}

const PEER_SPIFFE_ID = Symbol("connections.peerSpiffeId");

/** Where connect-node routes find the SPIFFE ID of the request's connection. */
export const PEER_SPIFFE_ID_KEY = createContextKey<string | undefined>(undefined, { description: "peer SPIFFE ID" });

/** Reads the PEM files and checks that they make a usable context (the key matches the certificate). */
export function readTlsCredentials(files: TlsFiles): TlsCredentials {
  const read = (variable: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (error) {
      throw new Error(`${variable} ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
  };
  const credentials: TlsCredentials = {
    cert: read("TLS_CERT_FILE", files.certFile),
    key: read("TLS_KEY_FILE", files.keyFile),
    ca: files.clientCaFile === undefined ? undefined : read("TLS_CLIENT_CA_FILE", files.clientCaFile),
  };
  try {
    tls.createSecureContext(credentials);
  } catch (error) {
    // OpenSSL's message names the problem ("key values mismatch", "no start line"), never key bytes.
    throw new Error(`TLS_CERT_FILE/TLS_KEY_FILE/TLS_CLIENT_CA_FILE: ${(error as Error).message}`);
  }
  // OpenSSL ignores a CA file without certificates; then every client would be refused, silently.
  if (credentials.ca !== undefined && !credentials.ca.includes("-----BEGIN CERTIFICATE-----")) {
    throw new Error(`TLS_CLIENT_CA_FILE ${files.clientCaFile}: no PEM certificate in it`);
  }
  return credentials;
}

export interface TlsTerminator {
  /** Takes an accepted TCP connection; `onSecure` gets it back decrypted, with its ALPN protocol. */
  accept(socket: Socket): void;
  /** Connections accepted from now on use these credentials. */
  setCredentials(credentials: TlsCredentials): void;
}

export function createTlsTerminator(
  credentials: TlsCredentials,
  handshakeTimeoutMs: number,
  onSecure: (socket: tls.TLSSocket) => void,
  onClientError: (error: Error) => void,
): TlsTerminator {
  const mutual = credentials.ca !== undefined;
  const server = tls.createServer({
    ...credentials,
    ALPNProtocols: ["h2", "http/1.1"],
    requestCert: mutual,
    rejectUnauthorized: mutual,
    handshakeTimeout: handshakeTimeoutMs,
  });
  server.on("secureConnection", (socket: tls.TLSSocket) => {
    if (mutual) {
      (socket as TaggedSocket)[PEER_SPIFFE_ID] = spiffeIdOf(socket.getPeerX509Certificate()?.subjectAltName);
    }
    onSecure(socket);
  });
  server.on("tlsClientError", (error) => onClientError(error));
  return {
    accept: (socket) => server.emit("connection", socket),
    setCredentials: (next) => server.setSecureContext({ ...next }),
  };
}

interface TaggedSocket {
  [PEER_SPIFFE_ID]?: string | undefined;
}

/** The SPIFFE ID of a connection's verified client certificate; works on http2's socket proxies too. */
export function peerSpiffeIdOf(socket: object | undefined | null): string | undefined {
  return socket == null ? undefined : (socket as TaggedSocket)[PEER_SPIFFE_ID];
}

/** connect-node context values carrying the request connection's SPIFFE ID. */
export function tlsContextValues(request: IncomingMessage | Http2ServerRequest) {
  return createContextValues().set(PEER_SPIFFE_ID_KEY, peerSpiffeIdOf(request.socket));
}

/**
 * The one SPIFFE ID among a certificate's URI SANs (an X.509-SVID carries exactly one), from
 * node's subjectAltName text: `DNS:a, URI:spiffe://td/x`, with entries that contain special
 * characters JSON-quoted (`URI:"spiffe://td/a,b"`).
 */
export function spiffeIdOf(subjectAltName: string | undefined): string | undefined {
  if (subjectAltName === undefined) return undefined;
  const found: string[] = [];
  let rest = subjectAltName;
  while (rest.length > 0) {
    const colon = rest.indexOf(":");
    if (colon < 0) break;
    const type = rest.slice(0, colon);
    rest = rest.slice(colon + 1);
    let value: string;
    if (rest.startsWith('"')) {
      const end = closingQuote(rest);
      if (end < 0) return undefined;
      value = JSON.parse(rest.slice(0, end + 1)) as string;
      rest = rest.slice(end + 1);
    } else {
      const comma = rest.indexOf(", ");
      value = comma < 0 ? rest : rest.slice(0, comma);
      rest = comma < 0 ? "" : rest.slice(comma);
    }
    if (type === "URI" && value.startsWith("spiffe://")) found.push(value);
    rest = rest.startsWith(", ") ? rest.slice(2) : "";
  }
  return found.length === 1 ? found[0] : undefined;
}

function closingQuote(text: string): number {
  for (let index = 1; index < text.length; index++) {
    if (text[index] === "\\") index++;
    else if (text[index] === '"') return index;
  }
  return -1;
}
