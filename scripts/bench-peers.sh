#!/usr/bin/env bash
# bench-peers.sh [peers.sh arguments...] — runs ../shared/bench/peers.sh with the kernel's
# scheduler autogroups off, then puts the setting back.
#
# Why: peers.sh starts each candidate with `setsid`, so on a kernel with autogroups on
# (/proc/sys/kernel/sched_autogroup_enabled = 1, the default on most distributions) the candidate
# is scheduled as a group of its own against one group holding wrk, the backends and the nginx or
# HAProxy under test. On a 2-core box that costs any proxy about a third of its throughput: the
# same nginx made 49-57k req/s in wrk's session and 33-37k under `setsid`, Sluice 49-53k and 32k
# (docs/BENCHMARKS.md, session 10). With autogroups off every thread is scheduled alike, whatever
# its session, and candidate and peers compare on equal terms.
#
# Needs root (or a writable sysctl); without it, runs peers.sh as it is and says so.
# Example (L7, the issue's setting):
#   ROUNDS=5 DURATION=5 CONNS=64 PEERS="nginx-l7 haproxy-l7" WORKERS=2 scripts/bench-peers.sh \
#     --candidate sluice 18200 'SLUICE_BIN=$PWD/target/release/sluice ../shared/bench/sluice-candidate.sh l7 18200'
set -euo pipefail
cd "$(dirname "$0")/.."
knob=/proc/sys/kernel/sched_autogroup_enabled
if [[ -w $knob ]]; then
  was=$(cat "$knob")
  trap 'echo "$was" > "$knob"' EXIT
  echo 0 > "$knob"
  echo "bench-peers: scheduler autogroups off for the run (was $was)" >&2
elif [[ -e $knob && $(cat "$knob") != 0 ]]; then
  echo "bench-peers: cannot turn autogroups off ($knob not writable): the candidate runs in a" \
       "scheduling group of its own and the comparison is lopsided" >&2
fi
../shared/bench/peers.sh "$@"
