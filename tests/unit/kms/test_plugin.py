"""The KMS plugin's pure parts: the 1 KiB split, gRPC status codes, and stubs that match the proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from keyops.errors import (
    DecryptionError,
    KeyNotFound,
    KeyStateError,
    MalformedCiphertext,
    NotPermitted,
    VaultUnreachable,
)
from keyops.kms.plugin import MAX_CIPHERTEXT, TAIL_ANNOTATION, grpc_status, join_ciphertext, split_ciphertext

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("size", [1, MAX_CIPHERTEXT - 1, MAX_CIPHERTEXT, MAX_CIPHERTEXT + 1, 20_000])
def test_a_ciphertext_splits_at_1_kib_and_joins_again(size: int) -> None:
    blob = bytes(range(256)) * (size // 256 + 1)
    blob = blob[:size]
    first, annotations = split_ciphertext(blob)
    assert len(first) <= MAX_CIPHERTEXT
    assert bool(annotations) == (size > MAX_CIPHERTEXT)
    assert join_ciphertext(first, annotations) == blob


def test_join_refuses_what_keyops_did_not_write() -> None:
    with pytest.raises(Exception, match="unexpected annotation"):
        join_ciphertext(b"x", {"other.example.com": b"y"})
    with pytest.raises(DecryptionError):  # a tail after a short first part was moved or cut
        join_ciphertext(b"x" * 10, {TAIL_ANNOTATION: b"y"})


def test_errors_become_the_grpc_codes_the_apiserver_tells_apart() -> None:
    assert grpc_status(VaultUnreachable("down")) is grpc.StatusCode.UNAVAILABLE
    assert grpc_status(DecryptionError()) is grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_status(MalformedCiphertext("bad")) is grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_status(KeyNotFound("no")) is grpc.StatusCode.NOT_FOUND
    assert grpc_status(NotPermitted("no")) is grpc.StatusCode.PERMISSION_DENIED
    assert grpc_status(KeyStateError("cap")) is grpc.StatusCode.FAILED_PRECONDITION


def test_the_committed_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    (tmp_path / "keyops/kms/v2").mkdir(parents=True)
    shutil.copy(ROOT / "keyops/kms/v2/api.proto", tmp_path / "keyops/kms/v2/api.proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--pyi_out=.",
                    "--grpc_python_out=.", "keyops/kms/v2/api.proto"], cwd=tmp_path, check=True)
    for name in ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py"):
        generated = (tmp_path / "keyops/kms/v2" / name).read_text()
        assert generated == (ROOT / "keyops/kms/v2" / name).read_text(), f"run scripts/gen_kms_stubs.sh ({name})"


def test_the_service_keeps_the_kubernetes_names() -> None:
    from keyops.kms.v2 import api_pb2

    service = api_pb2.DESCRIPTOR.services_by_name["KeyManagementService"]
    assert service.full_name == "v2.KeyManagementService"
    assert [m.name for m in service.methods] == ["Status", "Decrypt", "Encrypt"]
    fields = {name: {f.name: f.number for f in api_pb2.DESCRIPTOR.message_types_by_name[name].fields}
              for name in ("StatusResponse", "DecryptRequest", "EncryptRequest", "EncryptResponse")}
    assert fields == {"StatusResponse": {"version": 1, "healthz": 2, "key_id": 3},
                      "DecryptRequest": {"ciphertext": 1, "uid": 2, "key_id": 3, "annotations": 4},
                      "EncryptRequest": {"plaintext": 1, "uid": 2},
                      "EncryptResponse": {"ciphertext": 1, "key_id": 2, "annotations": 3}}
