#!/usr/bin/env python3
"""Peak memory of a process tree, for gateway/bench/browser.sh.

Usage: memory.py ROOT_PID OUT_FILE STOP_FILE

Until STOP_FILE exists, samples the tree under ROOT_PID (the root and all its
descendants) and keeps in OUT_FILE "PEAK_RSS_KIB PEAK_PSS_KIB":

- RSS summed over the tree, every 100 ms (/proc/PID/statm: cheap). A
  multi-process browser's processes share most of their pages (the binary,
  the zygote's), and RSS counts a shared page once in every process, so this
  sum grows with the number of processes more than with memory used.
- PSS summed over the tree, every 500 ms (/proc/PID/smaps_rollup: each
  shared page divided among the processes sharing it), which adds up to
  what the tree takes from the machine. Read less often: walking every
  mapping of every process costs tens of milliseconds of CPU per sample.
"""
import os
import sys
import time

root, out, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
page_kib = os.sysconf("SC_PAGE_SIZE") // 1024


def tree():
    parent = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    members = []
    for pid in parent:
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 0)
        if p == root:
            members.append(pid)
    return members


def rss(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * page_kib
        except OSError:
            pass
    return total


def pss(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


peak_rss = peak_pss = 0
tick = 0
while not os.path.exists(stop):
    pids = tree()
    peak_rss = max(peak_rss, rss(pids))
    if tick % 5 == 0:
        peak_pss = max(peak_pss, pss(pids))
    with open(out + ".new", "w") as f:
        f.write(f"{peak_rss} {peak_pss}\n")
    os.replace(out + ".new", out)
    tick += 1
    time.sleep(0.1)
