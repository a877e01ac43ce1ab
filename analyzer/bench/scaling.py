#!/usr/bin/env python3
"""One-to-two-core speedup of two builds, beside this machine's ceiling (docs/PERFORMANCE.md).

    scaling.py REPS NEW OLD ARGS...

Each round runs, one after the other: NEW on CPU 0 with one rayon thread (c1), NEW with
two rayon threads (t2), two copies of NEW at once on CPUs 0 and 1 with one thread each
(pair), then OLD c1 and OLD t2; ARGS are the arguments of every run. Prints the
median and best elapsed times, each build's speedup (c1 / t2) and the ceiling
(2 x c1 / pair: what two cores give two runs that share nothing but the machine).
Interleaving the runs matters on a shared VM whose speed drifts from minute to minute.
"""
import os, statistics, subprocess, sys, time
reps, new, old, args = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]


def run(argvs, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    t = time.time()
    ps = [subprocess.Popen(a, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
          for a in argvs]
    for p in ps:
        p.wait()
    return time.time() - t


one = lambda b, cpu: ['taskset', '-c', str(cpu), b] + args
res = {k: [] for k in ('c1 new', 't2 new', 'pair new', 'c1 old', 't2 old')}
for _ in range(reps):
    res['c1 new'].append(run([one(new, 0)], 1))
    res['t2 new'].append(run([[new] + args], 2))
    res['pair new'].append(run([one(new, 0), one(new, 1)], 1))
    res['c1 old'].append(run([one(old, 0)], 1))
    res['t2 old'].append(run([[old] + args], 2))
m = {k: statistics.median(v) for k, v in res.items()}
for k, v in res.items():
    print(f"{k:9s} med {m[k]:.3f} min {min(v):.3f}")
print(f"speedup 1->2 cores: new {m['c1 new'] / m['t2 new']:.2f}x, "
      f"old {m['c1 old'] / m['t2 old']:.2f}x; ceiling {2 * m['c1 new'] / m['pair new']:.2f}x")
