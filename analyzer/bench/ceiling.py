#!/usr/bin/env python3
"""What two cores can give a workload on this machine (docs/PERFORMANCE.md, "Analyzer").

    ceiling.py REPS COMMAND...

Alternates, REPS times: COMMAND alone on CPU 0, then two copies of COMMAND at once, on
CPUs 0 and 1, each with RAYON_NUM_THREADS=1. Prints the elapsed times and the
throughput of the two cores relative to one: 2 x alone / pair. Two independent copies
share nothing but the machine (caches, memory bandwidth, the host's scheduling of the
virtual CPUs), so this ratio is the most a replay could gain from its second core here:
a one-to-two-core speedup is near-linear when it comes close to it.
"""
import os, statistics, subprocess, sys, time
reps, cmd = int(sys.argv[1]), sys.argv[2:]
env = dict(os.environ, RAYON_NUM_THREADS='1')
alone, pair = [], []
for _ in range(reps):
    t = time.time()
    subprocess.run(['taskset', '-c', '0'] + cmd, env=env, stdout=subprocess.DEVNULL)
    alone.append(time.time() - t)
    t = time.time()
    ps = [subprocess.Popen(['taskset', '-c', str(c)] + cmd, env=env, stdout=subprocess.DEVNULL)
          for c in (0, 1)]
    for p in ps:
        p.wait()
    pair.append(time.time() - t)
a, p = statistics.median(alone), statistics.median(pair)
print(f"alone min {min(alone):.3f} med {a:.3f} | pair min {min(pair):.3f} med {p:.3f} | "
      f"two cores give {2 * a / p:.2f}x one (min-based {2 * min(alone) / min(pair):.2f}x)")
