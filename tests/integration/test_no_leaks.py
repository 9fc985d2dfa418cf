"""No key material, plaintext secret, token or PIN in any output, log, exception or stored document.

One module-scoped run drives keyops the way an operator would (CLI commands,
errors included) and the library in-process (errors of every kind), then
collects every secret it can get its hands on: every KEK and DEK version of
every tenant on the shared stack (unwrapped through keyops), the plaintexts
stored in this run, the root token, the PINs and the unseal key. Each is
searched for raw, as Python's bytes repr, in hex (either case) and in base64
(standard and URL-safe, at each of the three byte alignments, so that a key
embedded in a larger base64 blob is found too).

The scanner proves itself: planted secrets are found (synthetic haystacks,
a canary key put into the server's audit log through a request path, a
document planted in KV, the owner-only secret files themselves), and so are
the plaintexts where they belong (``secret get`` and ``decrypt`` output).
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest

from keyops import crypto
from keyops.config import Config
from keyops.crypto import b64d
from keyops.dev.stack import DevStack, free_port
from keyops.errors import KeyopsError
from keyops.model.keyring import Policy
from keyops.ops.front import Keyops, keyring_path
from keyops.wrappers import AeadWrapper

pytestmark = pytest.mark.integration

KV = "keyops"
KEYOPS = [sys.executable, "-m", "keyops.cli.main"]
WRONG_PIN = "wrong-pin-for-leak-check-7f3e9a1c"
#: Files of the state folder that exist to hold a secret, readable by their owner only.
SECRET_FILES = ("root-token", "unseal-key", "softhsm/user-pin", "softhsm/so-pin")


# --- the scanner ------------------------------------------------------------------------------------------------

_HEX_WINDOW = 32  # hex characters: every needle is at least 16 bytes long
_B64_WINDOW = 20  # base64 characters of a needle's core
_HEX_RE = re.compile(rb"(?=([0-9a-f]{%d}))" % _HEX_WINDOW)
_B64_RE = re.compile(rb"(?=([A-Za-z0-9+/_-]{%d}))" % _B64_WINDOW)
_ZERO_RUNS = re.compile(rb"\x00{64,}")
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def base64_cores(secret: bytes) -> list[bytes]:
    """The base64 characters that depend on ``secret`` alone, at byte offsets 0, 1 and 2 of a larger blob."""
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + secret)
        start, end = (8 * offset + 5) // 6, 8 * (offset + len(secret)) // 6
        cores.append(encoded[start:end])
    return cores


class Scanner:
    """Finds any of a set of secrets in any of the forms they could leak in. Labels never hold the secret."""

    def __init__(self) -> None:
        self.raw: dict[bytes, str] = {}
        self.hex: dict[bytes, list[tuple[bytes, str]]] = collections.defaultdict(list)
        self.b64: dict[bytes, list[tuple[bytes, str]]] = collections.defaultdict(list)
        self.labels: set[str] = set()

    def add(self, label: str, secret: bytes | str) -> None:
        value = secret.encode() if isinstance(secret, str) else bytes(secret)
        assert len(value) >= 16, f"{label}: too short to search for without false alarms"
        self.labels.add(label)
        self.raw[value] = label
        self.raw[repr(value)[2:-1].encode("ascii")] = label  # b'\x8f...' in a message
        hexed = value.hex().encode()
        self.hex[hexed[:_HEX_WINDOW]].append((hexed, label))
        for core in base64_cores(value):
            for form in (core, core.translate(_URLSAFE)):
                self.b64[form[:_B64_WINDOW]].append((form, label))

    def scan(self, data: bytes | str) -> set[str]:
        """Labels of the secrets found in ``data``."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        data = _ZERO_RUNS.sub(b"\x00", data)  # storage files are mostly zero pages
        found = {label for needle, label in self.raw.items() if needle in data}
        lowered = data.lower()
        for match in _HEX_RE.finditer(lowered):
            for full, label in self.hex.get(match.group(1), ()):
                if lowered.startswith(full, match.start()):
                    found.add(label)
        for match in _B64_RE.finditer(data):
            for full, label in self.b64.get(match.group(1), ()):
                if data.startswith(full, match.start()):
                    found.add(label)
        return found


_SAFE_AUDIT_VALUE = re.compile(
    r"hmac-sha256:[0-9a-f]{64}"  # values the audit device hashed
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # request ids
    r"|\d{4}-\d\d-\d\dT[\d:.]+Z")  # timestamps


def reduce_json_lines(data: bytes) -> bytes:
    """The distinct strings of a JSON-lines log, without the ones that cannot hold a secret (for speed).

    Lines that are not JSON are kept whole.
    """
    strings: set[str] = set()
    kept: list[bytes] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                strings.add(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            if not _SAFE_AUDIT_VALUE.fullmatch(value):
                strings.add(value)
        else:
            strings.add(str(value))

    for line in data.splitlines():
        try:
            walk(json.loads(line))
        except ValueError:
            kept.append(line)
    return b"\n".join(kept) + b"\n" + "\n".join(sorted(strings)).encode("utf-8", "surrogateescape")


def test_scanner_finds_every_form(tmp_path: Path) -> None:
    key, other = os.urandom(32), os.urandom(32)
    scanner = Scanner()
    scanner.add("the key", key)
    planted = {
        "raw": b"junk" + key + b"junk",
        "raw in zeros": bytes(5000) + key + bytes(5000),
        "repr": f"error: bad key {key!r} given".encode(),
        "hex": b"value=" + key.hex().encode() + b";",
        "HEX": b"value=" + key.hex().upper().encode(),
        "base64": json.dumps({"k": base64.b64encode(key).decode()}).encode(),
        "urlsafe": base64.urlsafe_b64encode(key).rstrip(b"="),
    }
    for offset in range(3):  # inside a larger base64 blob, at every alignment
        planted[f"embedded base64 +{offset}"] = base64.b64encode(os.urandom(7 + offset) + key + os.urandom(5))
        planted[f"embedded urlsafe +{offset}"] = base64.urlsafe_b64encode(os.urandom(4 + offset) + key)
    planted["json lines"] = reduce_json_lines(
        b'{"time":"2025-01-01T00:00:00.1Z","request":{"id":"a934dcd7-7f7b-8c17-4f46-5a6e4bc08c4a",'
        b'"path":"x/' + key.hex().encode() + b'"}}\nnot json ' + base64.b64encode(key) + b"\n")
    for name, haystack in planted.items():
        assert scanner.scan(haystack) == {"the key"}, name
    clean = [b"", os.urandom(100_000), base64.b64encode(other), other.hex().encode(),
             base64.b64encode(key)[:30], key.hex()[:31].encode(), key[:15]]
    for haystack in clean:
        assert scanner.scan(haystack) == set()


# --- the run ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LeakRun:
    stack: DevStack
    scanner: Scanner
    cli_outputs: dict[str, bytes]  # "command: stream" -> bytes; to be clean
    expected_plaintext_outputs: dict[str, tuple[bytes, str]]  # stdout that must hold a plaintext, and its label
    error_texts: list[str]  # messages and whole tracebacks of the errors raised in-process
    canary_label: str
    tenants: list[str]
    collected: collections.Counter[str]


def cli(env: dict[str, str], *args: str, data: bytes = b"", code: int = 0) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([*KEYOPS, *args], input=data, env=env, capture_output=True, timeout=120)
    assert proc.returncode == code, (args, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def _raise_and_capture(actions: Iterable[Callable[[], Any]]) -> list[str]:
    texts = []
    for action in actions:
        try:
            action()
        except KeyopsError as exc:
            texts.append(str(exc))
            texts.append(repr(exc))
            texts.append("".join(traceback.format_exception(exc)))
        else:
            raise AssertionError(f"{action} raised nothing")
    return texts


def _every_key(k: Keyops, scanner: Scanner, counts: collections.Counter[str], must: set[str]) -> None:
    """Unwrap every KEK and DEK version of every tenant on the stack into the scanner."""
    for tenant in k.list_tenants():
        try:
            keyring = k.get_tenant(tenant)
        except KeyopsError:
            counts["unreadable keyring"] += 1  # other tests leave broken documents behind on purpose
            assert tenant not in must
            continue
        for kv in keyring.kek.versions:
            try:
                scanner.add(f"KEK {tenant} v{kv.version}", k.hierarchy._kek(keyring, kv.version))
                counts["kek"] += 1
            except KeyopsError:
                counts["kek not unwrapped"] += 1
                assert tenant not in must
        for kv in keyring.dek.versions:
            try:
                wrapper = k.hierarchy.kek_wrapper(keyring, kv.parent_version)
                raw = wrapper.unwrap(b64d(kv.wrapped), crypto.key_context(tenant, "dek", kv.version))
                scanner.add(f"DEK {tenant} v{kv.version}", raw)
                counts["dek"] += 1
            except KeyopsError:
                counts["dek not unwrapped"] += 1
                assert tenant not in must


@pytest.fixture(scope="module")
def leak_run(stack: DevStack, config: Config, vault_client: Any, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[LeakRun]:
    scanner = Scanner()
    env = {**os.environ, **stack.env()}
    kv_tenant, tr_tenant = f"leak-kv-{uuid.uuid4().hex[:8]}", f"leak-tr-{uuid.uuid4().hex[:8]}"
    plaintexts = {f"plaintext {i}": f"plaintext-{i}-{uuid.uuid4().hex}".encode() for i in range(6)}
    for label, value in plaintexts.items():
        scanner.add(label, value)
    p = list(plaintexts.values())
    outputs: dict[str, bytes] = {}
    expected: dict[str, tuple[bytes, str]] = {}

    def run_all(*commands: tuple[Any, ...]) -> dict[str, bytes]:
        """Run independent commands side by side (the suite waits on each child otherwise); stdout by name.

        Each command: (name, args, stdin, exit code, environment or None, label of the plaintext it prints or None).
        """
        def one(command: tuple[Any, ...]) -> subprocess.CompletedProcess[bytes]:
            name, args, data, code, environ, _ = command
            return cli(environ or env, *args, data=data, code=code)

        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            procs = list(pool.map(one, commands))
        stdouts = {}
        for (name, _, _, _, _, plaintext_label), proc in zip(commands, procs, strict=True):
            outputs[f"{name}: stderr"] = proc.stderr
            if plaintext_label is None:
                outputs[f"{name}: stdout"] = proc.stdout
            else:
                expected[f"{name}: stdout"] = (proc.stdout, plaintext_label)
            stdouts[name] = proc.stdout
        return stdouts

    # A full run of the commands of issue 2, errors included, in rounds of independent commands.
    run_all(("tenant create kv", ["tenant", "create", kv_tenant], b"", 0, None, None),
            ("tenant create transit", ["tenant", "create", tr_tenant, "--residence", "transit", "--json"],
             b"", 0, None, None))
    out = run_all(
        ("tenant list", ["tenant", "list", "--json"], b"", 0, None, None),
        ("tenant show", ["tenant", "show", kv_tenant], b"", 0, None, None),
        ("tenant show json", ["tenant", "show", tr_tenant, "--json"], b"", 0, None, None),
        ("secret put kv", ["secret", "put", kv_tenant, "app/pw"], p[0], 0, None, None),
        ("secret put transit", ["secret", "put", tr_tenant, "app/pw", "--json"], p[1], 0, None, None),
        ("secret put dry-run", ["secret", "put", tr_tenant, "app/other", "--dry-run"], p[2], 0, None, None),
        ("encrypt", ["encrypt", "--tenant", kv_tenant, "--context", "c"], p[3], 0, None, None),
        ("encrypt binary", ["encrypt", "--tenant", tr_tenant, "--binary"], p[4], 0, None, None),
        ("status", ["status"], b"", 0, None, None),
        ("dev status", ["dev", "status", "--state-dir", str(stack.state_dir), "--json"], b"", 0, None, None),
        ("dev env", ["dev", "env", "--state-dir", str(stack.state_dir)], b"", 0, None, None),
        ("secret get missing", ["secret", "get", kv_tenant, "nope"], b"", 5, None, None),
    )
    text = out["encrypt"]
    run_all(
        ("secret get kv", ["secret", "get", kv_tenant, "app/pw"], b"", 0, None, "plaintext 0"),
        ("secret get transit", ["secret", "get", tr_tenant, "app/pw"], b"", 0, None, "plaintext 1"),
        ("secret list", ["secret", "list", kv_tenant, "--json"], b"", 0, None, None),
        ("decrypt", ["decrypt", "--tenant", kv_tenant, "--context", "c"], text, 0, None, "plaintext 3"),
        ("decrypt binary", ["decrypt", "--tenant", tr_tenant], out["encrypt binary"], 0, None, "plaintext 4"),
        ("decrypt wrong context", ["decrypt", "--tenant", kv_tenant, "--context", "d"], text, 4, None, None),
        ("wrong PIN", ["secret", "get", kv_tenant, "app/pw"], b"", 22, {**env, "KEYOPS_PKCS11_PIN": WRONG_PIN},
         None),
        ("status json", ["status", "--json"], b"", 0, None, None),
    )
    run_all(("secret delete", ["secret", "delete", tr_tenant, "app/pw", "--json"], b"", 0, None, None))

    # Errors of every kind, in-process; their messages and whole tracebacks are scanned.
    tmp = tmp_path_factory.mktemp("leaks")
    errors: list[str] = []
    with Keyops(config) as k:
        k.put_secret(kv_tenant, "db/password", p[5])
        ct = k.encrypt(kv_tenant, p[5], "ctx")
        tr_ct = k.encrypt(tr_tenant, p[5], "ctx")
        keyring, version = k.read_keyring(kv_tenant)
        tr_keyring = k.get_tenant(tr_tenant)
        kek = k.hierarchy._kek(keyring, 1)
        weak_token = vault_client.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
        scanner.add("weak token", weak_token)
        pin_file = tmp / "pin"
        pin_file.write_text(config.resolve_pkcs11_pin())
        pin_file.chmod(0o644)
        toml = tmp / "keyops.toml"
        toml.write_text(f'vault_token = "{config.resolve_vault_token()}"\n')
        capped = f"leak-cap-{uuid.uuid4().hex[:8]}"
        k.create_tenant(capped, Policy(dek_usage_cap=1))
        k.encrypt(capped, b"x")
        dek_blob = b64d(keyring.dek.get(1).wrapped)
        errors += _raise_and_capture([
            lambda: k.decrypt(kv_tenant, ct, "other context"),
            lambda: k.decrypt(tr_tenant, tr_ct, "other context"),
            lambda: k.decrypt(tr_tenant, ct, "ctx"),
            lambda: k.decrypt(kv_tenant, ct[:-8] + "AAAAAAAA", "ctx"),
            lambda: k.decrypt(kv_tenant, ct[:40], "ctx"),
            lambda: k.decrypt(kv_tenant, ct.replace(":1:", ":9:"), "ctx"),
            lambda: k.get_secret(kv_tenant, "missing"),
            lambda: k.get_tenant(f"ghost-{uuid.uuid4().hex[:8]}"),
            lambda: k.create_tenant(kv_tenant, Policy(dek_period_days=3)),
            lambda: k.put_secret(kv_tenant, "../x", p[5]),
            lambda: k.write_keyring(kv_tenant, keyring, cas=version - 1 if version > 1 else version + 5),
            lambda: k.encrypt(capped, p[5]),
            lambda: AeadWrapper(kek).unwrap(dek_blob, crypto.key_context(kv_tenant, "dek", 2)),
            lambda: k.hierarchy.kek_wrapper(tr_keyring, 1).unwrap(dek_blob, crypto.key_context(tr_tenant, "dek", 1)),
            lambda: k.master_wrapper()[1].unwrap(b64d(keyring.kek.get(1).wrapped),
                                                 crypto.key_context(tr_tenant, "kek", 1)),
            lambda: Keyops(config.replace(vault_token=weak_token, vault_token_file=None)).store.read(
                keyring_path(kv_tenant)),
            lambda: Keyops(config.replace(vault_addr=f"http://127.0.0.1:{free_port()}")).get_secret(kv_tenant, "x"),
            lambda: Keyops(config.replace(pkcs11_pin=WRONG_PIN)).hierarchy._kek(keyring, 1),
            lambda: Config.load(env={"KEYOPS_PKCS11_PIN_FILE": str(pin_file)}).resolve_pkcs11_pin(),
            lambda: Config.load(env={}, config_file=toml),
        ])
        # Objects that hold keys or secrets print without them.
        errors += [repr(x) for x in (k, k.hsm, k.config, config, AeadWrapper(kek), k.dek(kv_tenant, 1),
                                     crypto.BoundKey(k.dek(kv_tenant, 1), kv_tenant, 1), keyring)]

        canary = os.urandom(32)
        scanner.add("canary", canary)
        # A request path is not hashed by the audit device: the canary lands in the audit log in clear.
        with pytest.raises(hvac.exceptions.InvalidPath):
            vault_client.secrets.kv.v2.read_secret_version(path=f"leak-canary/{canary.hex()}", mount_point=KV,
                                                           raise_on_deleted_version=True)

        # Every key we can get our hands on, and the stack's own secrets.
        counts: collections.Counter[str] = collections.Counter()
        _every_key(k, scanner, counts, must={kv_tenant, tr_tenant, capped})
    for name in SECRET_FILES:
        scanner.add(f"secret file {name}", (stack.state_dir / name).read_text().strip())
    if env["VAULT_TOKEN"] != (stack.state_dir / "root-token").read_text().strip():
        scanner.add("VAULT_TOKEN", env["VAULT_TOKEN"])
    scanner.add("wrong PIN", WRONG_PIN)

    yield LeakRun(stack, scanner, outputs, expected, errors, "canary", [kv_tenant, tr_tenant, capped], counts)


def _real(found: set[str], run: LeakRun) -> set[str]:
    return found - {run.canary_label}


# --- the scans ----------------------------------------------------------------------------------------------


def test_the_run_collected_keys(leak_run: LeakRun) -> None:
    assert leak_run.collected["kek"] >= 3 and leak_run.collected["dek"] >= 3, leak_run.collected
    for tenant in leak_run.tenants:
        assert f"KEK {tenant} v1" in leak_run.scanner.labels and f"DEK {tenant} v1" in leak_run.scanner.labels


def test_cli_output_has_no_secret(leak_run: LeakRun) -> None:
    # The scanner sees plaintexts where they belong: the output of secret get and decrypt.
    for name, (stdout, label) in leak_run.expected_plaintext_outputs.items():
        assert leak_run.scanner.scan(stdout) == {label}, name
    assert len(leak_run.cli_outputs) > 30
    leaks = {name: found for name, out in leak_run.cli_outputs.items() if (found := leak_run.scanner.scan(out))}
    assert leaks == {}
    assert b"wrong PIN" in leak_run.cli_outputs["wrong PIN: stderr"]  # the errors were really captured


def test_exception_messages_have_no_secret(leak_run: LeakRun) -> None:
    joined = "\n".join(leak_run.error_texts)
    for phrase in ("decryption failed", "no secret 'missing'", "has no keyring", "another policy",
                   "invalid secret name", "check-and-set", "usage cap", "permission denied", "cannot be reached",
                   "wrong PIN", "chmod 600", "must not hold secrets", "material hidden"):
        assert phrase in joined, phrase
    leaks = {i: found for i, text in enumerate(leak_run.error_texts) if (found := leak_run.scanner.scan(text))}
    assert leaks == {}, [leak_run.error_texts[i][:200] for i in leaks]


def test_server_logs_have_no_secret(leak_run: LeakRun) -> None:
    stack = leak_run.stack
    audit = stack.bao_audit_log.read_bytes()
    assert leak_run.tenants[0].encode() in audit  # the log of this very run
    found = leak_run.scanner.scan(reduce_json_lines(audit))
    assert leak_run.canary_label in found  # the planted canary is seen: the scan is real
    assert _real(found, leak_run) == set()
    assert leak_run.scanner.scan(stack.bao_log.read_bytes()) == set()


def test_kv_documents_have_no_key_material(leak_run: LeakRun, vault_client: Any) -> None:
    kv = vault_client.secrets.kv.v2

    def documents() -> Iterator[tuple[str, int, dict[str, Any]]]:
        pending = [""]
        while pending:
            folder = pending.pop()
            try:
                keys = kv.list_secrets(path=folder, mount_point=KV)["data"]["keys"]
            except hvac.exceptions.InvalidPath:
                continue
            for key in keys:
                path = f"{folder}{key}"
                if key.endswith("/"):
                    pending.append(path)
                    continue
                meta = kv.read_secret_metadata(path=path, mount_point=KV)["data"]
                # Every kept version of this run's documents, the latest of all others.
                mine = any(t in path for t in leak_run.tenants) or path == "master"
                versions = [int(v) for v, m in meta["versions"].items()
                            if not m["destroyed"] and not m["deletion_time"]] if mine else [meta["current_version"]]
                for version in versions:
                    resp = kv.read_secret_version(path=path, version=version, mount_point=KV,
                                                  raise_on_deleted_version=False)
                    if resp and resp["data"]["data"] is not None:
                        yield path, version, resp["data"]["data"]

    # A planted document with a DEK in it is found, then removed.
    planted = f"leakcheck/{uuid.uuid4().hex}"
    dek = next(label for label in leak_run.scanner.labels if label.startswith(f"DEK {leak_run.tenants[0]}"))
    secret = next(s for s, label in leak_run.scanner.raw.items() if label == dek and len(s) == 32)
    kv.create_or_update_secret(path=planted, secret={"note": base64.b64encode(b"x" + secret).decode()},
                               mount_point=KV)
    try:
        found = {path: labels for path, _, doc in documents() if (labels := leak_run.scanner.scan(json.dumps(doc)))}
        assert found == {planted: {dek}}
    finally:
        kv.delete_metadata_and_all_versions(path=planted, mount_point=KV)
    scanned = 0
    leaks = {}
    for path, version, doc in documents():
        scanned += 1
        if labels := leak_run.scanner.scan(json.dumps(doc)):
            leaks[(path, version)] = labels
    assert leaks == {}
    assert scanned >= 8


def test_state_folder_has_no_secret_outside_its_secret_files(leak_run: LeakRun) -> None:
    state = leak_run.stack.state_dir
    scanned = []
    leaks = {}
    for path in sorted(p for p in state.rglob("*") if p.is_file()):
        name = path.relative_to(state).as_posix()
        data = path.read_bytes()
        if name in SECRET_FILES:
            # Each holds its secret (the scanner sees it) and only its owner may read it.
            assert leak_run.scanner.scan(data) == {f"secret file {name}"}, name
            assert path.stat().st_mode & 0o077 == 0, name
            continue
        if path == leak_run.stack.bao_audit_log or path.suffix == ".jsonl":
            data = reduce_json_lines(data)
        found = _real(leak_run.scanner.scan(data), leak_run)
        if found:
            leaks[name] = found
        scanned.append(name)
    assert leaks == {}
    assert "bao/bao.log" in scanned and "audit/bao-audit.log" in scanned and "stack.json" in scanned
    assert any(n.endswith(".db") for n in scanned) and any(n.startswith("softhsm/tokens/") for n in scanned)
