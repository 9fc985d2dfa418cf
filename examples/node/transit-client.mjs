// A Node.js application of keyops serve: encrypt, decrypt and rewrap through the Transit-shaped
// HTTP API with nothing but fetch (no SDK, no node:crypto). The ciphertexts are opaque strings.
//
//   KEYOPS_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=<app token> node transit-client.mjs <tenant> [<mount>]
//
// Prints one JSON line describing what it did; exits 1 with the server's error otherwise.

const addr = (process.env.KEYOPS_ADDR || "http://127.0.0.1:8200").replace(/\/$/, "");
const token = process.env.VAULT_TOKEN;
const [tenant, mount = "transit"] = process.argv.slice(2);
if (!tenant || !token) {
  console.error("usage: KEYOPS_ADDR=... VAULT_TOKEN=... node transit-client.mjs <tenant> [<mount>]");
  process.exit(2);
}

const b64 = (text) => Buffer.from(text, "utf8").toString("base64");
const unb64 = (data) => Buffer.from(data, "base64").toString("utf8");

async function call(op, body) {
  const resp = await fetch(`${addr}/v1/${mount}/${op}/${tenant}`, {
    method: "POST",
    headers: { "X-Vault-Token": token, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000), // every call has a deadline
  });
  const answer = await resp.json();
  if (!resp.ok) {
    throw new Error(`${op}: HTTP ${resp.status}: ${(answer.errors || []).join("; ")}`);
  }
  return answer.data;
}

const message = "hello from node";
const aad = b64("node/orders/1");
const sealed = await call("encrypt", { plaintext: b64(message), associated_data: aad });
const opened = unb64((await call("decrypt", { ciphertext: sealed.ciphertext, associated_data: aad })).plaintext);
if (opened !== message) throw new Error("decrypt gave another plaintext");

const batch = await call("encrypt", { batch_input: ["a", "b", "c"].map((t, i) => ({ plaintext: b64(t), reference: `r${i}` })) });
const refs = batch.batch_results.map((r) => r.reference).join(",");

const rewrapped = await call("rewrap", { ciphertext: sealed.ciphertext, associated_data: aad });
const again = unb64((await call("decrypt", { ciphertext: rewrapped.ciphertext, associated_data: aad })).plaintext);
if (again !== message) throw new Error("the rewrapped ciphertext gave another plaintext");

let refused = false;
try {
  await call("decrypt", { ciphertext: sealed.ciphertext, associated_data: b64("another/path") });
} catch (err) {
  refused = /HTTP 400/.test(String(err));
}

console.log(JSON.stringify({
  ciphertext: sealed.ciphertext, key_version: sealed.key_version, decrypted: opened === message,
  batch_references: refs, rewrapped_version: rewrapped.key_version, rewrapped: rewrapped.ciphertext,
  wrong_associated_data_refused: refused,
}));
