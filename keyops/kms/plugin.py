"""The Kubernetes KMS v2 service over a unix socket, on one tenant's keys (``keyops.serve``).

What the kube-apiserver relies on, and how it is met:

- ``Status``: ``version`` "v2"; ``healthz`` "ok" only when Vault, the HSM
  (residence kv) and an encrypt/decrypt round trip work, else a short reason;
  ``key_id`` the primary DEK version's public id.
- ``Encrypt``: a keyops binary ciphertext, bound to the associated data
  ``KMS_CONTEXT``. The apiserver keeps at most 1 KiB of it; the rest of a
  longer one (a plaintext of more than about 960 bytes: the apiserver itself
  sends 32-byte seeds) goes to the annotation ``TAIL_ANNOTATION``. It is
  ciphertext too, and authenticated with the rest.
- ``Decrypt``: any version the tenant still keeps; the key id must be one this
  tenant made, and name the version the ciphertext carries. A tampered
  ciphertext, annotation or key id gets a gRPC error, never a plaintext.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc

from keyops.errors import (
    DecryptionError,
    InvalidInput,
    KeyopsError,
    KeyStateError,
    NotFound,
    PermissionDenied,
)
from keyops.kms.v2 import api_pb2, api_pb2_grpc
from keyops.serve.tenant_keys import TenantKeys

API_VERSION = "v2"
KMS_CONTEXT = b"kubernetes-kms-v2"
#: The apiserver refuses a ciphertext over 1 KiB.
MAX_CIPHERTEXT = 1024
TAIL_ANNOTATION = "ciphertext-tail.kms.keyops.io"
#: Annotations (keys and values) must stay under 32 kB; this bound keeps the tail well inside.
MAX_PLAINTEXT = 16 * 1024
#: gRPC messages larger than any request the service accepts are refused by gRPC itself.
MAX_MESSAGE = 64 * 1024
DEFAULT_WORKERS = 8

_log = logging.getLogger("keyops.kms")
_Reply = TypeVar("_Reply")


def split_ciphertext(blob: bytes) -> tuple[bytes, dict[str, bytes]]:
    if len(blob) <= MAX_CIPHERTEXT:
        return blob, {}
    return blob[:MAX_CIPHERTEXT], {TAIL_ANNOTATION: blob[MAX_CIPHERTEXT:]}


def join_ciphertext(ciphertext: bytes, annotations: dict[str, bytes]) -> bytes:
    unexpected = sorted(set(annotations) - {TAIL_ANNOTATION})
    if unexpected:
        raise InvalidInput(f"unexpected annotation(s) {', '.join(unexpected)}: keyops did not write them")
    tail = annotations.get(TAIL_ANNOTATION, b"")
    if tail and len(ciphertext) != MAX_CIPHERTEXT:
        raise DecryptionError()  # a tail only ever follows a full first part
    return ciphertext + tail


def grpc_status(exc: KeyopsError) -> grpc.StatusCode:
    if exc.retryable:
        return grpc.StatusCode.UNAVAILABLE
    for kind, code in ((DecryptionError, grpc.StatusCode.INVALID_ARGUMENT),
                       (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
                       (NotFound, grpc.StatusCode.NOT_FOUND),
                       (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
                       (KeyStateError, grpc.StatusCode.FAILED_PRECONDITION)):
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


class KmsService(api_pb2_grpc.KeyManagementServiceServicer):
    def __init__(self, keys: TenantKeys) -> None:
        self.keys = keys

    def Status(self, request: Any, context: Any) -> Any:  # noqa: N802  # the proto's method name
        health = self.keys.health()
        if not health.ok:
            _log.warning("Status: not healthy: %s", health.reason)
        return api_pb2.StatusResponse(version=API_VERSION, healthz=health.reason, key_id=health.key_id)

    def Encrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        def encrypt() -> Any:
            if len(request.plaintext) > MAX_PLAINTEXT:
                raise InvalidInput(f"plaintext of {len(request.plaintext)} bytes: at most {MAX_PLAINTEXT} accepted")
            blob, key_id = self.keys.encrypt(request.plaintext)
            ciphertext, annotations = split_ciphertext(blob)
            return api_pb2.EncryptResponse(ciphertext=ciphertext, key_id=key_id, annotations=annotations)
        return _answer("Encrypt", request.uid, context, encrypt)

    def Decrypt(self, request: Any, context: Any) -> Any:  # noqa: N802
        def decrypt() -> Any:
            blob = join_ciphertext(request.ciphertext, dict(request.annotations))
            return api_pb2.DecryptResponse(plaintext=self.keys.decrypt(blob, request.key_id))
        return _answer("Decrypt", request.uid, context, decrypt)


def _answer(method: str, uid: str, context: Any, work: Callable[[], _Reply]) -> _Reply:
    """Run one call; a keyops error becomes its gRPC status, with a message that holds no secret."""
    try:
        return work()
    except KeyopsError as exc:
        _log.warning("%s (uid %s): %s: %s", method, uid[:64], exc.code, exc)
        context.abort(grpc_status(exc), f"{exc.code}: {exc}")
    except Exception:
        _log.exception("%s (uid %s): internal error", method, uid[:64])
        context.abort(grpc.StatusCode.INTERNAL, "internal error; see the plugin's log")
    raise AssertionError("context.abort returns only by raising")  # pragma: no cover


def prepare_socket(path: Path) -> None:
    """Refuse a path that is not a socket, or a socket another plugin still serves; remove a dead one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InvalidInput(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # left by a plugin that died: nothing answers on it
    else:
        raise InvalidInput(f"another process already serves {path}; stop it first")
    finally:
        probe.close()


class Plugin:
    """The gRPC server on a unix socket of mode 0600; ``stop`` ends it and removes the socket."""

    def __init__(self, keys: TenantKeys, socket_path: str | os.PathLike[str], *,
                 workers: int = DEFAULT_WORKERS) -> None:
        self.path = Path(socket_path)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kms"),
                                  options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                           ("grpc.max_send_message_length", MAX_MESSAGE)])
        register = api_pb2_grpc.add_KeyManagementServiceServicer_to_server  # protoc's, untyped
        register(KmsService(keys), self.server)  # type: ignore[no-untyped-call]

    def start(self) -> None:
        prepare_socket(self.path)
        # The socket is made with mode 0600 from the start: the umask covers the moment between
        # bind and chmod, in which another user could otherwise connect.
        old = os.umask(0o177)
        try:
            if not self.server.add_insecure_port(f"unix:{self.path}"):
                raise InvalidInput(f"cannot listen on unix socket {self.path}")
        finally:
            os.umask(old)
        self.server.start()
        os.chmod(self.path, 0o600)

    def stop(self, grace: float) -> None:
        self.server.stop(grace).wait(grace + 1.0)
        self.path.unlink(missing_ok=True)


def run_until_signalled(plugin: Plugin, *, grace: float = 5.0, ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly (calls in flight get ``grace`` seconds)."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        plugin.start()
        if ready is not None:
            ready()
        while not stopping.wait(1.0):  # a timed wait, so the signal handler runs promptly
            pass
    finally:
        plugin.stop(grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
