// An independent reader of keyops ciphertexts, written from docs/formats.md alone (no keyops code):
// it decrypts a keyops:v1: text ciphertext of a tenant of residence transit with the tenant's DEK,
// which it unwraps through Vault's own Transit API with an app token of that tenant.
//
//   VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=<app token> node format-reader.mjs <ciphertext> [<context>]
//
// Settings: KEYOPS_KV_MOUNT (default keyops), KEYOPS_TRANSIT_MOUNT (default transit).
// Prints the plaintext (base64) on stdout; exits 1 with a message when it cannot.

import { createDecipheriv } from "node:crypto";

const addr = (process.env.VAULT_ADDR || "http://127.0.0.1:8200").replace(/\/$/, "");
const token = process.env.VAULT_TOKEN;
const kv = process.env.KEYOPS_KV_MOUNT || "keyops";
const transit = process.env.KEYOPS_TRANSIT_MOUNT || "transit";
const [text, context = ""] = process.argv.slice(2);

// Fields: a 4-byte big-endian length, then the bytes; integers as their decimal digits.
function fields(...values) {
  const parts = [];
  for (const value of values) {
    const raw = Buffer.isBuffer(value) ? value : Buffer.from(String(value), "utf8");
    const len = Buffer.alloc(4);
    len.writeUInt32BE(raw.length);
    parts.push(len, raw);
  }
  return Buffer.concat(parts);
}

async function vault(method, path, body) {
  const resp = await fetch(`${addr}/v1/${path}`, {
    method,
    headers: { "X-Vault-Token": token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const answer = await resp.json();
  if (!resp.ok) throw new Error(`${method} ${path}: HTTP ${resp.status}: ${(answer.errors || []).join("; ")}`);
  return answer;
}

function parse(ciphertext) {
  const parts = ciphertext.split(":");
  if (parts.length !== 5 || parts[0] !== "keyops" || parts[1] !== "v1") {
    throw new Error("not a keyops:v1: text ciphertext");
  }
  const [, , tenant, versionText, body] = parts;
  if (!/^[1-9][0-9]*$/.test(versionText)) throw new Error("bad DEK version");
  const raw = Buffer.from(body, "base64");
  if (raw.length < 12 + 16) throw new Error("truncated ciphertext");
  return { tenant, version: Number(versionText), nonce: raw.subarray(0, 12),
           sealed: raw.subarray(12, raw.length - 16), tag: raw.subarray(raw.length - 16) };
}

async function dek(tenant, version) {
  const keyring = (await vault("GET", `${kv}/data/tenants/${tenant}/keyring`)).data.data;
  if (keyring.tenant !== tenant) throw new Error("the keyring names another tenant");
  const found = keyring.dek.versions.find((v) => v.version === version);
  if (!found) throw new Error(`tenant ${tenant} has no DEK version ${version}`);
  const wrapped = Buffer.from(found.wrapped, "base64").toString("ascii"); // Transit's vault:vN:...
  const aad = fields("keyops-key-v1", tenant, "dek", version, "wrap");
  const answer = await vault("POST", `${transit}/decrypt/keyops-${tenant}`,
                             { ciphertext: wrapped, associated_data: aad.toString("base64") });
  return Buffer.from(answer.data.plaintext, "base64");
}

try {
  if (!text || !token) throw new Error("usage: VAULT_ADDR=... VAULT_TOKEN=... node format-reader.mjs <ciphertext> [<context>]");
  const ct = parse(text.trim());
  const key = await dek(ct.tenant, ct.version);
  const decipher = createDecipheriv("aes-256-gcm", key, ct.nonce);
  decipher.setAAD(fields("keyops-data-v1", 1, ct.tenant, ct.version, Buffer.from(context, "utf8")));
  decipher.setAuthTag(ct.tag);
  const plain = Buffer.concat([decipher.update(ct.sealed), decipher.final()]);
  process.stdout.write(plain.toString("base64") + "\n");
} catch (err) {
  console.error(`format-reader: ${err.message}`);
  process.exit(1);
}
