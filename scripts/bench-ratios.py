#!/usr/bin/env python3
"""bench-ratios.py CANDIDATE OUT_DIR... — pools peers.sh runs into in-round ratios.

peers.sh interleaves its configs round by round, so a candidate and a peer measured in the same
round saw the same machine. On a shared 2-core box one run's medians still move by +-10%; the
ratio within a round moves much less. This reads the results.tsv of each run directory (peers.sh
OUT=...), takes CANDIDATE's req/s and CPU per request over each peer's in every round, and prints
their geometric means with a 95% interval (+-2 standard errors of the mean log ratio), pooled over
all rounds of all runs given.

Example:
  for i in 1 2 3; do OUT=/tmp/l4-$i ROUNDS=6 ... scripts/bench-peers.sh --candidate sluice ...; done
  scripts/bench-ratios.py sluice /tmp/l4-1 /tmp/l4-2 /tmp/l4-3
"""
import csv
import math
import statistics
import sys
from collections import defaultdict


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    candidate, dirs = argv[1], argv[2:]
    rounds = defaultdict(dict)  # (run, round, conns, path) -> config -> row
    for d in dirs:
        with open(f"{d}/results.tsv") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                rounds[(d, row["round"], row["conns"], row["path"])][row["config"]] = row
    ratios = defaultdict(lambda: ([], []))  # peer -> (req/s ratios, CPU ratios)
    for configs in rounds.values():
        ours = configs.get(candidate)
        if ours is None:
            continue
        for peer, theirs in configs.items():
            if peer == candidate or float(theirs["rps"]) <= 0 or float(theirs["cpu_us_per_req"]) <= 0:
                continue
            ratios[peer][0].append(float(ours["rps"]) / float(theirs["rps"]))
            ratios[peer][1].append(float(ours["cpu_us_per_req"]) / float(theirs["cpu_us_per_req"]))
    if not ratios:
        sys.exit(f"no round has both {candidate} and a peer")
    print(f"{candidate} against each peer, in-round ratios pooled over {len(dirs)} run(s)")
    print("| peer | rounds | req/s ratio | 95% interval | CPU/req ratio | 95% interval |")
    print("|---|---:|---:|---:|---:|---:|")
    for peer, (rps, cpu) in sorted(ratios.items()):
        r, r_lo, r_hi = geomean_interval(rps)
        c, c_lo, c_hi = geomean_interval(cpu)
        print(f"| {peer} | {len(rps)} | {r:.3f} | {r_lo:.3f}-{r_hi:.3f} | {c:.3f} | {c_lo:.3f}-{c_hi:.3f} |")


def geomean_interval(xs):
    logs = [math.log(x) for x in xs]
    mean = statistics.fmean(logs)
    se = statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("inf")
    return math.exp(mean), math.exp(mean - 2 * se), math.exp(mean + 2 * se)


if __name__ == "__main__":
    main(sys.argv)
