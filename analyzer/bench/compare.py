#!/usr/bin/env python3
"""Compares analyzers' CPU time, elapsed time and peak RSS (docs/PERFORMANCE.md, "Analyzer").

    compare.py MODE REPS LABEL=COMMAND...

Runs the commands one after the other, REPS rounds (alternating, so that a change in the
machine's load hits all of them alike), and prints per command the minimum and median of
CPU time (user + sys of the process and its threads), elapsed time, and the largest peak
RSS. MODE: c1 = one core (taskset -c 0, RAYON_NUM_THREADS=1), t1 = RAYON_NUM_THREADS=1,
t2 = RAYON_NUM_THREADS=2. Example:

    compare.py c1 5 now="heaptape analyze --json r10m.trace" htp="heaptrack_print ht10m.zst"
"""
import os, subprocess, sys, statistics, resource, time
mode, reps, cmds = sys.argv[1], int(sys.argv[2]), [a.split('=', 1) for a in sys.argv[3:]]
env = dict(os.environ)
env['RAYON_NUM_THREADS'] = '1' if mode in ('c1', 't1') else '2'
res = {l: [] for l, _ in cmds}
for _ in range(reps):
    for label, cmd in cmds:
        argv = (['taskset', '-c', '0'] if mode == 'c1' else []) + cmd.split()
        t0 = time.time()
        pid = os.fork()
        if pid == 0:
            fd = os.open('/dev/null', os.O_WRONLY); os.dup2(fd, 1); os.dup2(fd, 2)
            os.execvpe(argv[0], argv, env)
        _, status, ru = os.wait4(pid, 0)
        wall = time.time() - t0
        res[label].append((ru.ru_utime + ru.ru_stime, wall, ru.ru_maxrss))
for label, v in res.items():
    cpu = sorted(x[0] for x in v); wall = sorted(x[1] for x in v)
    print(f"{mode} {label:10s} cpu min {cpu[0]:.3f} med {statistics.median(cpu):.3f} | wall min {wall[0]:.3f} med {statistics.median(wall):.3f} | rss {max(x[2] for x in v)/1024:.0f} MB")
