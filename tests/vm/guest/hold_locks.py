# hold_locks.py READY FILE...: takes a whole-file fcntl write lock (F_SETLKW) on each FILE, then
# writes its pid to READY and keeps the locks until it is killed.
import fcntl
import os
import sys
import time

fds = []
for path in sys.argv[2:]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    fds.append(fd)
    print("locked", path, flush=True)
with open(sys.argv[1], "w") as ready:
    ready.write("%d\n" % os.getpid())
while True:
    time.sleep(3600)
