# A socket holder, as systemd's socket units are: binds UDP and TCP on
# 127.0.0.1:PORT once, and starts allowdns with them passed (LISTEN_FDS=2,
# fd 3 UDP, fd 4 TCP) as many times as asked.
#   holder.py PORT GAP ALLOWDNS ARGS...
# GAP: seconds between stopping one child and starting the next (a slow
# restart: a large policy, a loaded machine).
# Each start runs `ALLOWDNS check ARGS...` first, as the unit's ExecStartPre.
# stdin: "restart" stops the running child (SIGTERM, waits) and starts
# another; end of input stops the child and exits. stdout: "started PID".
import os
import signal
import socket
import subprocess
import sys

import time

port, gap, argv = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", port))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", port))
tcp.listen(1024)
# Out of the way of 3 and 4, where the child gets them.
held = [os.dup2(udp.fileno(), 100, inheritable=False), os.dup2(tcp.fileno(), 101, inheritable=False)]
udp.close()
tcp.close()


def start():
    check = [argv[0], "check"] + [a for a in argv[1:] if a != "serve"]
    subprocess.run(check, check=True, stdout=subprocess.DEVNULL)
    pid = os.fork()
    if pid == 0:
        for i, fd in enumerate(held):
            os.dup2(fd, 3 + i)
            os.set_inheritable(3 + i, True)
        env = dict(os.environ, LISTEN_FDS="2", LISTEN_PID=str(os.getpid()))
        os.execve(argv[0], argv, env)
    print("started", pid, flush=True)
    return pid


def stop(pid):
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)


child = start()
# readline, not iteration: each command acts when it arrives.
while (line := sys.stdin.readline()):
    if line.strip() == "restart":
        stop(child)
        time.sleep(gap)
        child = start()
stop(child)
