"""Write docs/modules.md: the keyops.kms reference, as ansible-doc renders each plugin's DOCUMENTATION.

    .venv/bin/python scripts/module_docs.py            # rewrite docs/modules.md
    .venv/bin/python scripts/module_docs.py --check    # exit 1 when docs/modules.md is stale

The checkout itself is the collection (symlinked into a temporary
ansible_collections/ tree), so the reference always matches the code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET = REPO_ROOT / "docs" / "modules.md"
ANSIBLE_DOC = Path(sys.executable).parent / "ansible-doc"

HEADER = """# keyops.kms — module and plugin reference

Generated from each plugin's DOCUMENTATION, EXAMPLES and RETURN by `ansible-doc`; do not edit.
Regenerate with:

```sh
.venv/bin/python scripts/module_docs.py
```

The modules run where the Vault token and the HSM are reachable (usually the controller), import the
`keyops` library, and share their connection and HSM options (doc fragments `keyops.kms.connection` and
`keyops.kms.hsm`, environment fallbacks `VAULT_ADDR`, `VAULT_TOKEN`, `KEYOPS_PKCS11_*` ...). Set them once
for a play with `module_defaults: {group/keyops.kms.all: {...}}`.

"""


def plugins(env: dict[str, str]) -> list[tuple[str, str]]:
    """(type, name) of every module and lookup of keyops.kms, modules first, by name."""
    found = []
    for kind in ("module", "lookup"):
        out = subprocess.run([str(ANSIBLE_DOC), "-t", kind, "-l", "keyops.kms"], env=env, capture_output=True,
                             text=True, check=True).stdout
        found += [(kind, line.split()[0]) for line in out.splitlines() if line.startswith("keyops.kms.")]
    return sorted(found, key=lambda item: (item[0] != "module", item[1]))


def title(kind: str, name: str) -> str:
    return name if kind == "module" else f"{name} {kind}"


def render() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        namespace = Path(tmp) / "ansible_collections" / "keyops"
        namespace.mkdir(parents=True)
        (namespace / "kms").symlink_to(REPO_ROOT, target_is_directory=True)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=tmp, ANSIBLE_NOCOLOR="1", COLUMNS="110",
                   ANSIBLE_HOME=str(Path(tmp) / "home"), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false")
        env.pop("ANSIBLE_CONFIG", None)
        found = plugins(env)
        parts = [HEADER, "## Contents\n\n"]
        parts += [f"- [{title(kind, name)}](#{title(kind, name).replace('.', '').replace(' ', '-')})\n"
                  for kind, name in found]
        for kind, name in found:
            text = subprocess.run([str(ANSIBLE_DOC), "-t", kind, name], env=env, capture_output=True, text=True,
                                  check=True).stdout
            text = text.replace(str(REPO_ROOT), ".").replace(tmp, "<collections>")
            parts.append(f"\n## {title(kind, name)}\n\n```text\n{text.rstrip()}\n```\n")
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/modules.md is not up to date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(REPO_ROOT)} is stale; run: .venv/bin/python scripts/module_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
