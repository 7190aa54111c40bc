#!/usr/bin/env bash
# Run the tests beside a CPU hog and a second vLLM server serving a small FRet job in a loop (a
# user trying the tool while the tests run), as CI's shared machines are: the promise is that
# they pass there too. Run from a fresh clone.
#   scripts/under_load.sh make-test 3   # `make test` three times
#   scripts/under_load.sh resume 10     # the two resume tests ten times each, one pytest session
# Prints one line per run and a tally; exits non-zero if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:?make-test or resume}
times=${2:-1}
make setup vllm > /dev/null
mkdir -p out/under_load
python3 -c "while True: pass" &
hog=$!
.venv/bin/python scripts/second_server_load.py out/under_load/second_server > out/under_load/second_server.log 2>&1 &
second=$!
trap 'kill $hog 2>/dev/null; kill -TERM $second 2>/dev/null; wait $second 2>/dev/null' EXIT
passed=0
case "$what" in
  make-test)
    for i in $(seq 1 "$times"); do
      start=$(date +%s)
      if make test > "out/under_load/make-test-$i.log" 2>&1; then passed=$((passed + 1)); status=passed; else status=FAILED; fi
      echo "make test run $i: $status in $(( $(date +%s) - start )) s: $(tail -n 1 "out/under_load/make-test-$i.log")"
    done
    ;;
  resume)
    .venv/bin/pip install -q --disable-pip-version-check pytest-repeat  # --count; only for this script
    start=$(date +%s)
    .venv/bin/python -m pytest tests/test_fret_job_vllm.py -k resume --count "$times" -q > out/under_load/resume.log 2>&1
    code=$?
    echo "the two resume tests x$times: $(tail -n 1 out/under_load/resume.log) in $(( $(date +%s) - start )) s"
    exit $code
    ;;
  *) echo "unknown: $what (make-test or resume)"; exit 2 ;;
esac
echo "$passed of $times passed"
[ "$passed" -eq "$times" ]
