// Certificates made at test time with the openssl CLI: a CA, a server certificate for 127.0.0.1
// and localhost, and client certificates whose URI SAN is a SPIFFE ID. Nothing secret is checked in.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface Pem {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: Buffer;
  readonly key: Buffer;
}

export interface TestPki {
  readonly directory: string;
  readonly ca: Pem;
  /** Issues a certificate signed by this CA; `uris` become URI SANs, `dns`/`ips` the others. */
  issue(name: string, sans: { uris?: string[]; dns?: string[]; ips?: string[] }): Pem;
  /** A self-signed CA of its own, unknown to the server. */
  foreignCa(): TestPki;
  remove(): void;
}

function openssl(args: string[], cwd: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/** openssl arguments for a fresh P-256 key, shared by the CA and every leaf. */
const NEW_P256_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

export function createTestPki(directory = mkdtempSync(join(tmpdir(), "connections-pki-"))): TestPki {
  const file = (name: string) => join(directory, name);
  const caExtensions = [
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ];
  openssl(
    [
      "req",
      "-x509",
      ...NEW_P256_KEY,
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "2",
      "-subj",
      "/CN=connections test CA",
      ...caExtensions,
    ],
    directory,
  );
  const pem = (base: string): Pem => ({
    certFile: file(`${base}.pem`),
    keyFile: file(`${base}.key`),
    cert: readFileSync(file(`${base}.pem`)),
    key: readFileSync(file(`${base}.key`)),
  });
  return {
    directory,
    ca: pem("ca"),
    issue(name, sans) {
      const entries = [
        ...(sans.uris ?? []).map((uri) => `URI:${uri}`),
        ...(sans.dns ?? []).map((dns) => `DNS:${dns}`),
        ...(sans.ips ?? []).map((ip) => `IP:${ip}`),
      ];
      writeFileSync(
        file(`${name}.ext`),
        `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n` +
          (entries.length > 0 ? `subjectAltName=${entries.join(",")}\n` : ""),
      );
      openssl(
        ["req", "-new", ...NEW_P256_KEY, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`],
        directory,
      );
      openssl(
        [
          "x509",
          "-req",
          "-in",
          `${name}.csr`,
          "-CA",
          "ca.pem",
          "-CAkey",
          "ca.key",
          "-CAcreateserial",
          "-days",
          "2",
          "-extfile",
          `${name}.ext`,
          "-out",
          `${name}.pem`,
        ],
        directory,
      );
      return pem(name);
    },
    foreignCa() {
      return createTestPki(mkdtempSync(join(directory, "foreign-")));
    },
    remove() {
      rmSync(directory, { recursive: true, force: true });
    },
  };
}
