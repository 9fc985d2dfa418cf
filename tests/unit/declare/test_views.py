"""The plan's views for the Ansible module: seeds by name, drift warning, diffs as lines, no digest."""

from __future__ import annotations

from keyops.declare import Plan, Step
from keyops.declare.views import DRIFT_SHOWN, drift_warning, plan_diffs, plan_view, seed_names, summary


def plan(*steps: Step, prune: bool = False) -> Plan:
    return Plan(tuple(steps), {"master": 1, "tenants": {}}, "the inventory", "ab" * 32, prune)


SEEDS = (Step("create_secret", "acme/db/password", "create seed", tenant="acme"),
         Step("update_secret", "acme/api/key", "overwrite", tenant="acme"))


def test_seeds_are_named_by_what_is_done_to_them() -> None:
    assert seed_names(SEEDS) == {"create": ["acme/db/password"], "overwrite": ["acme/api/key"]}
    assert seed_names([]) == {"create": [], "overwrite": []}


def test_the_view_leaves_out_the_digest_and_the_fingerprint() -> None:
    view = plan_view(plan(*SEEDS, Step("drift", "stray", "drift", tenant="stray")))
    assert view["changes"] == 2 and view["drift"] == ["stray"]
    assert "ab" * 32 not in repr(view) and "fingerprint" not in view and "declaration" not in view


def test_summary_counts_changes_and_drift() -> None:
    assert summary(plan()) == "plan: no changes"
    assert summary(plan(*SEEDS), applied=True) == "applied: 2 changes"
    assert summary(plan(Step("drift", "s", "d")), applied=False) == "nothing to apply: no changes, " \
                                                                    "1 undeclared tenant (drift)"


def test_drift_warning_names_tenants_and_what_prune_does() -> None:
    assert drift_warning(plan(*SEEDS)) is None
    many = [Step("drift", f"t{i:02}", "d") for i in range(DRIFT_SHOWN + 3)]
    warning = drift_warning(plan(*many))
    assert warning is not None
    assert warning.startswith(f"{DRIFT_SHOWN + 3} tenants in Vault not declared (drift): t00, t01")
    assert "and 3 more" in warning and "prune: true deletes" in warning
    assert f"t{DRIFT_SHOWN:02}" not in warning
    pruned = drift_warning(plan(Step("drift", "s", "d"), Step("delete_tenant", "s", "x"), prune=True))
    assert pruned is not None and "deleted (crypto-shredded) by this run's prune" in pruned


def test_policy_changes_are_diffs_of_lines() -> None:
    update = Step("update_policy", "acme", "u", tenant="acme",
                  changes={"dek_period_days": [30, 14], "keep_versions": [None, 2]})
    vault = Step("policy", "keyops-app-acme", "update Vault policy keyops-app-acme",
                 changes=["--- server", "+++ declared", "@@ -1 +1 @@", '-path "a" {', '+path "b" {'])
    master = Step("master_period", "master", "m", changes={"period_days": [365, 180]})
    rotate = Step("rotate", "acme", "r", tenant="acme", level="dek", version=1, new_version=2)
    diffs = plan_diffs(plan(update, vault, master, rotate))
    assert diffs[0]["before"] == "dek_period_days: 30\nkeep_versions: (unset)\n"
    assert diffs[0]["after"] == "dek_period_days: 14\nkeep_versions: 2\n"
    assert diffs[1] == {"prepared": '--- server\n+++ declared\n@@ -1 +1 @@\n-path "a" {\n+path "b" {\n'}
    assert diffs[2]["before"] == "period_days: 365\n" and diffs[2]["after"] == "period_days: 180\n"
    assert len(diffs) == 3  # a rotation changes no setting: it is in the steps, not the diff


def test_an_unreadable_undeclared_tenant_is_drift_and_never_pruned() -> None:
    import datetime as dt

    from keyops.declare import Observed, diff, validate

    observed = Observed({}, None, 0, {}, dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
                        unreadable={"broken": "keyring of tenant 'broken' has no schema"})
    for prune in (False, True):
        found = diff(validate({"tenants": []}), observed, prune=prune)
        assert [(s.action, s.target) for s in found.steps] == [("drift", "broken")]
        assert "its keyring cannot be read (keyring of tenant 'broken' has no schema)" in found.steps[0].summary
        assert bool(found.notes) is prune and (not prune or "is not pruned" in found.notes[0])
