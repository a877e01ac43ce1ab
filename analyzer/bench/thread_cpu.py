#!/usr/bin/env python3
"""Per-thread CPU time of a command (docs/PERFORMANCE.md, "Analyzer").

    thread_cpu.py MODE COMMAND...

Runs COMMAND, reads every thread's CPU time (utime + stime from /proc/PID/task/TID/stat)
every 20 ms, and prints each thread's name and CPU time, largest first (`*` marks the
main thread, which is the replaying thread), then the elapsed time and the threads'
total (the last 20 ms of each thread may be missed). The largest single thread bounds
the elapsed time however many cores there are: that is the serial part of the replay.
MODE as compare.py (c1, t1, t2).
"""
import os, sys, time
mode, argv = sys.argv[1], sys.argv[2:]
env = dict(os.environ); env['RAYON_NUM_THREADS'] = '1' if mode in ('c1','t1') else '2'
if mode == 'c1': argv = ['taskset','-c','0'] + argv
tick = os.sysconf('SC_CLK_TCK')
t0 = time.time()
pid = os.fork()
if pid == 0:
    fd = os.open('/dev/null', os.O_WRONLY); os.dup2(fd, 1); os.dup2(fd, 2)
    os.execvpe(argv[0], argv, env)
last = {}
while True:
    r, status = os.waitpid(pid, os.WNOHANG)
    if r: break
    try:
        for tid in os.listdir(f'/proc/{pid}/task'):
            try:
                f = open(f'/proc/{pid}/task/{tid}/stat').read().rsplit(')',1)[1].split()
                name = open(f'/proc/{pid}/task/{tid}/comm').read().strip()
                last[tid] = ((int(f[11]) + int(f[12])) / tick, name + ('*' if tid == str(pid) else ''))
            except OSError: pass
    except OSError: pass
    time.sleep(0.02)
wall = time.time() - t0
cpu = sorted(last.values(), reverse=True)
print(" ".join(f"{n}={c:.2f}" for c, n in cpu if c > 0.005))
cpu = [c for c, n in cpu]
print(f"{mode} wall {wall:.2f} s, threads' CPU {sum(cpu):.2f} s:", ' '.join(f'{c:.2f}' for c in cpu if c > 0.005))
