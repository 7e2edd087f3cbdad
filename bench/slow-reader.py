#!/usr/bin/env python3
"""A deliberately slow log sink for benchmarks: reads a FIFO at a fixed byte rate.
Usage: bench/slow-reader.py FIFO [BYTES_PER_SECOND] (default 65536). Creates the FIFO."""
import os
import sys
import time

path = sys.argv[1]
rate = int(sys.argv[2]) if len(sys.argv) > 2 else 65536
if not os.path.exists(path):
    os.mkfifo(path)
while True:
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(rate // 10)
            if not chunk:
                break
            time.sleep(0.1)
