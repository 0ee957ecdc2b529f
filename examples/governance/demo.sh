#!/usr/bin/env bash
# Privacy ledger demo: two weekly retrains on one dataset fit the budget only because the ledger
# composes them with dp-accounting (the naive sum of ε would already exceed it); the third is refused.
set -euo pipefail
PRIVREC=${PRIVREC:-privrec}
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PRIVREC_DB="sqlite:///$WORK/privrec.db"
run() { echo; echo "\$ privrec $*"; "$PRIVREC" "$@"; }

# synthetic MovieLens-style ratings.csv, interactions up to 500 days old
"${PYTHON:-python3}" - "$WORK/ratings.csv" <<'PY'
import sys, time
from privrec.data import synthetic
df = synthetic(n_users=3000, n_items=400, seed=0).to_dataframe()
df = df.rename(columns={"user": "userId", "item": "movieId", "value": "rating"})
df["rating"] = 4.0
df["timestamp"] = int(time.time()) - (df.index.to_numpy() * 7919 % 500) * 86400
df[["userId", "movieId", "rating", "timestamp"]].to_csv(sys.argv[1], index=False)
PY

echo "== the owner creates the ledger and registers the dataset under its policy"
OWNER_KEY=$("$PRIVREC" ledger init --owner olga | tail -1)
run policy check "$HERE/policy.toml" --data "$WORK/ratings.csv"
PRIVREC_API_KEY=$OWNER_KEY run policy set "$HERE/policy.toml" --dataset demo
ANALYST_KEY=$(PRIVREC_API_KEY=$OWNER_KEY "$PRIVREC" keys create ann --role analyst | tail -1)
PRIVREC_API_KEY=$OWNER_KEY run forget 17 --dataset demo --reason "erasure request"

echo; echo "== the analyst retrains weekly: each training reserves its charge before drawing noise"
export PRIVREC_API_KEY=$ANALYST_KEY
for week in 1 2; do
  run train --data "$WORK/ratings.csv" --model dpals --epsilon 1 --delta 1e-6 --unit user \
      -p factors=16 --dataset demo --output "$WORK/week$week.npz"
done
run ledger status --dataset demo
echo; echo "== week 3 would exceed the budget: refused before any noise is drawn"
if run train --data "$WORK/ratings.csv" --model dpals --epsilon 1 --delta 1e-6 --unit user \
    -p factors=16 --dataset demo --output "$WORK/week3.npz"; then
  echo "unexpected: the third training was not refused" >&2; exit 1
fi
test ! -e "$WORK/week3.npz"

echo; echo "== the auditor's view"
PRIVREC_API_KEY=$OWNER_KEY run ledger history --dataset demo
PRIVREC_API_KEY=$OWNER_KEY run lineage "$WORK/week1.npz"
PRIVREC_API_KEY=$OWNER_KEY run audit-log verify
