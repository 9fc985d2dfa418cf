#!/usr/bin/env bash
# The keyops commands of both CI pipelines (github-actions.yml, gitlab-ci.yml), in one place: the
# pipelines call this script, and tests/integration/test_declared_state.py runs it against the local
# stack with a JWT login, so what CI runs is what the suite tested.
#
#   keyops-ci.sh plan        pull requests: the plan, as the job's summary; changes nothing
#   keyops-ci.sh apply       merge to main: plan, then apply exactly that saved plan
#   keyops-ci.sh scheduled   on a schedule: rotate what is due, re-encrypt what rotated, retention
#
# Login: `keyops login` with the CI system's OIDC token through Vault's JWT auth (KEYOPS_JWT_ROLE and
# KEYOPS_JWT or KEYOPS_JWT_FILE), or AppRole (VAULT_ROLE_ID, VAULT_SECRET_ID_FILE); its token goes to
# ~/.vault-token (mode 0600) for the commands after it and is never printed.
set -euo pipefail
umask 077

stage=${1:?usage: keyops-ci.sh plan|apply|scheduled}
declaration=${KEYOPS_DECLARATION:-keys.yml}
out=${KEYOPS_CI_OUT:-keyops-ci}
summary=${GITHUB_STEP_SUMMARY:-$out/summary.md}
mkdir -p "$out"

# GitHub Actions hands out its OIDC token on request (the job needs permissions: id-token: write);
# GitLab CI puts it in KEYOPS_JWT itself (id_tokens).
if [ -n "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" ]; then
  export KEYOPS_JWT_FILE="${KEYOPS_JWT_FILE:-${RUNNER_TEMP:?}/vault-oidc-token}"
  curl -sSf --max-time 30 -H "Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN" \
    "$ACTIONS_ID_TOKEN_REQUEST_URL&audience=${KEYOPS_OIDC_AUDIENCE:-vault}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["value"])' >"$KEYOPS_JWT_FILE"
fi
keyops login >&2

case "$stage" in
  plan)
    rc=0
    keyops plan -f "$declaration" --detailed-exitcode --out "$out/plan.json" >"$out/plan.txt" || rc=$?
    cat "$out/plan.txt"
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then exit "$rc"; fi  # 0 no changes, 2 changes, 1 an error
    {
      echo "### keyops plan for \`$declaration\`"
      echo
      echo '```'
      cat "$out/plan.txt"
      echo '```'
    } >>"$summary"
    ;;
  apply)
    keyops plan -f "$declaration" --out "$out/plan.json"
    keyops apply "$out/plan.json"  # refused (exit 7) if anything moved since the plan: run the job again
    ;;
  scheduled)
    rc=0
    keyops rotate --due --json >"$out/rotated.json" || rc=$?  # 1: some failed; the others still rotated
    python3 - "$out/rotated.json" >"$out/reencrypt.txt" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print("\n".join(sorted({r["tenant"] for r in report.get("rotations", [])
             if r.get("level") == "dek" and r.get("changed")})))
PY
    while read -r tenant; do
      [ -n "$tenant" ] && keyops reencrypt --tenant "$tenant"
    done <"$out/reencrypt.txt"
    keyops retention
    exit "$rc"
    ;;
  *)
    echo "keyops-ci.sh: unknown stage $stage (plan, apply or scheduled)" >&2
    exit 2
    ;;
esac
