"""The key lifecycle as a Hypothesis rule-based state machine (issue 13, item 4).

One tenant's keyring, its secret records (which DEK version each was
written under) and the master key registry go through any sequence of
rotations (whole, or interrupted before the re-wrap), secret writes,
partial re-encryptions, retirements and destructions, using keyops' own
functions for every change: ``Keyring.add_version`` and ``set_state``,
``lifecycle.end_version`` (the reference rules of retire and destroy),
``rotation.claim_master_version`` and ``promote_master_version``. After
every step:

* each level (master, KEK, DEK) has exactly one ``active`` version, and it
  is the primary;
* nothing destroyed or retired is referred to: every secret's DEK version,
  every DEK's KEK version and every KEK's master version is there and
  decrypts;
* version numbers are never reused, and the keyring survives its own
  document (``to_dict`` / ``from_dict``).

A retire or destroy is refused exactly when the version is the primary
(``KeyStateError``) or something refers to it (``KeyInUse``), and a refusal
changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from keyops.errors import KeyInUse, KeyStateError
from keyops.model.keyring import KeyChain, Keyring, Policy, referenced_parents
from keyops.model.master import MasterRegistry
from keyops.ops.lifecycle import end_version
from keyops.ops.rotation import (
    claim_master_version,
    promote_master_version,
    stale_dek_versions,
    stale_kek_versions,
)

TENANT = "acme"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
WRAPPED = "d3JhcHBlZA=="  # stands for a wrapped key: the lifecycle never looks inside
DECRYPTING = ("active", "decrypt_only")


class KeyLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        master = MasterRegistry.first("keyops-master", NOW)
        self.master = promote_master_version(master, 1)
        empty = Keyring(TENANT, Policy(), "2026-01-01T00:00:00Z", KeyChain(0, ()), KeyChain(0, ()))
        kek = empty.add_version("kek", WRAPPED, self.master.primary, NOW)
        self.keyring = kek.add_version("dek", WRAPPED, kek.kek.primary, NOW)
        self.records: dict[str, int] = {}
        self.highest = {"kek": 1, "dek": 1}

    # --- changes -------------------------------------------------------------------------------

    @rule()
    def rotate_dek(self) -> None:
        self.keyring = self.keyring.add_version("dek", WRAPPED, self.keyring.kek.primary, NOW)

    @rule(rewrap=st.booleans())
    def rotate_kek(self, rewrap: bool) -> None:
        """A KEK rotation; without ``rewrap`` it was interrupted after the new KEK's write."""
        self.keyring = self.keyring.add_version("kek", WRAPPED, self.master.primary, NOW)
        if rewrap:
            self.finish_kek_rotation()

    @rule()
    def finish_kek_rotation(self) -> None:
        for version in stale_dek_versions(self.keyring):
            kv = self.keyring.dek.get(version)
            self.keyring = self.keyring.replace_version("dek", dataclasses.replace(
                kv, parent_version=self.keyring.kek.primary))

    @rule(rewrap=st.booleans())
    def rotate_master(self, rewrap: bool) -> None:
        claimed = claim_master_version(self.master, "keyops-master", NOW)
        self.master = promote_master_version(claimed, claimed.versions[-1].version)
        if rewrap:
            self.finish_master_rotation()

    @rule()
    def finish_master_rotation(self) -> None:
        for version in stale_kek_versions(self.keyring, self.master.primary):
            kv = self.keyring.kek.get(version)
            self.keyring = self.keyring.replace_version("kek", dataclasses.replace(
                kv, parent_version=self.master.primary))

    @rule(name=st.sampled_from(["a", "b", "c", "d"]))
    def write_secret(self, name: str) -> None:
        self.records[name] = self.keyring.dek.primary

    @rule(names=st.sets(st.sampled_from(["a", "b", "c", "d"])))
    def reencrypt(self, names: set[str]) -> None:
        """A re-encryption that got through some of the records (a partial run, or one that was stopped)."""
        for name in names & set(self.records):
            self.records[name] = self.keyring.dek.primary

    @rule(level=st.sampled_from(["kek", "dek"]), pick=st.integers(min_value=0, max_value=20),
          action=st.sampled_from(["retire", "destroy"]))
    def end(self, level: str, pick: int, action: str) -> None:
        chain = self.keyring.chain(level)
        version = chain.versions[pick % len(chain.versions)].version
        records: dict[int, int] = {}
        for dek_version in self.records.values():
            records[dek_version] = records.get(dek_version, 0) + 1
        before = self.keyring
        referenced = (version in referenced_parents(self.keyring.dek) if level == "kek"
                      else records.get(version, 0) > 0)
        try:
            after = end_version(self.keyring, level, version, action, NOW, records)  # type: ignore[arg-type]
        except KeyStateError as exc:
            # KeyInUse is a KeyStateError too: tell the two refusals apart.
            if isinstance(exc, KeyInUse):
                assert referenced and version != chain.primary
            else:  # the only other refusal: a state never goes back, and what is in the chain is not destroyed
                assert version == chain.primary
            assert self.keyring == before
            return
        assert version != chain.primary and not referenced
        self.keyring = after

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def one_primary_per_level(self) -> None:
        for level in ("kek", "dek"):
            chain = self.keyring.chain(level)
            active = [kv.version for kv in chain.versions if kv.state == "active"]
            assert active == [chain.primary], (level, active, chain.primary)
        active = [mv.version for mv in self.master.versions if mv.state == "active"]
        assert active == [self.master.primary]

    @invariant()
    def nothing_referenced_is_gone(self) -> None:
        keks = {kv.version: kv for kv in self.keyring.kek.versions}
        deks = {kv.version: kv for kv in self.keyring.dek.versions}
        for name, version in self.records.items():
            assert version in deks and deks[version].state in DECRYPTING, (name, version)
        for dek in deks.values():
            assert dek.parent_version in keks and keks[dek.parent_version].state in DECRYPTING, dek
        masters = {mv.version: mv for mv in self.master.versions}
        for kek in keks.values():
            assert masters[kek.parent_version].state in DECRYPTING, kek

    @invariant()
    def versions_are_never_reused(self) -> None:
        for level in ("kek", "dek"):
            chain = self.keyring.chain(level)
            numbers = [kv.version for kv in chain.versions] + [t.version for t in chain.tombstones]
            assert len(numbers) == len(set(numbers))
            assert chain.latest_version >= self.highest[level]
            self.highest[level] = chain.latest_version

    @invariant()
    def the_document_reads_back(self) -> None:
        assert Keyring.from_dict(self.keyring.to_dict()) == self.keyring
        assert MasterRegistry.from_dict(self.master.to_dict()) == self.master


TestKeyLifecycle = KeyLifecycle.TestCase
