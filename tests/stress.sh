#!/usr/bin/env bash
# The flakiness check (`make stress`, or `bash tests/stress.sh [ROUNDS]`): the integration, e2e and distributed
# layers ROUNDS times in a row (default 3), as `make test` runs them, while a busy loop holds one core the whole
# time, as on a shared CI machine or a laptop doing other work. Prints each round's result and time, then every test
# that failed in any round with how often; exits non-zero if any did.
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
out=test-artifacts/stress
rm -rf "$out" && mkdir -p "$out"

nice -n 0 bash -c 'while :; do :; done' &  # the other work on the machine: one core, for as long as the check runs
hog=$!
trap 'kill $hog 2>/dev/null' EXIT

status=0
for round in $(seq 1 "$rounds"); do
  start=$(date +%s)
  .venv/bin/python -m pytest -n "${TEST_PROCESSES:-2}" --dist loadfile -q -p no:cacheprovider \
    --layer integration --layer e2e --layer distributed --junitxml="$out/round-$round.xml" >"$out/round-$round.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || status=1
  echo "round $round: exit $rc in $(( $(date +%s) - start )) s: $(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$out/round-$round.log" | tail -1)"
done

.venv/bin/python - "$out" "$rounds" <<'EOF'
import collections, pathlib, sys
import xml.etree.ElementTree as ET

out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
failed = collections.Counter()
for xml in sorted(out.glob("round-*.xml")):
    for case in ET.parse(xml).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed[f"{case.get('classname')}::{case.get('name')}"] += 1
print(f"{len(failed)} tests failed in some round of {rounds}" + (":" if failed else ""))
for test, times in failed.most_common():
    print(f"  {times}/{rounds}  {test}")
EOF
exit $status
