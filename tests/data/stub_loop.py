# CLIENTS clients, each asking one question after another as a stub
# resolver does (up to ATTEMPTS tries of TIMEOUT seconds; a refused try,
# nothing listening, fails at once, as glibc's does), with a short pause
# between questions as a program doing work has. Runs for SECONDS, then
# prints "asked N answered M lost L".
#   stub_loop.py udp|tcp HOST PORT NAME SECONDS
import random
import socket
import struct
import sys
import threading
import time

proto, host, port, name, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
ATTEMPTS, TIMEOUT, CLIENTS, PAUSE = 2, 3.0, 8, 0.05
qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"


def question(qid):
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)


def answered(reply, qid):
    # The ID matches, it is a response, NOERROR with an answer.
    return (
        len(reply) >= 12
        and struct.unpack(">H", reply[:2])[0] == qid
        and reply[2] & 0x80
        and reply[3] & 15 == 0
        and struct.unpack(">H", reply[6:8])[0] > 0
    )


def try_udp(qid):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((host, port))
        s.send(question(qid))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            if answered(s.recv(4096), qid):
                return True
        return False
    except OSError:
        return False
    finally:
        s.close()


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def try_tcp(qid):
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as s:
            s.settimeout(TIMEOUT)
            q = question(qid)
            s.sendall(struct.pack(">H", len(q)) + q)
            size = struct.unpack(">H", recv_exact(s, 2))[0]
            return answered(recv_exact(s, size), qid)
    except OSError:
        return False


ask = try_udp if proto == "udp" else try_tcp
counts = [[0, 0] for _ in range(CLIENTS)]
end = time.monotonic() + seconds


def client(n):
    pause = random.Random(n)
    while time.monotonic() < end:
        counts[n][0] += 1
        qid = (n << 12 | counts[n][0]) & 0xFFFF
        if any(ask(qid) for _ in range(ATTEMPTS)):
            counts[n][1] += 1
        time.sleep(pause.uniform(0, PAUSE))


threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
asked, ok = sum(c[0] for c in counts), sum(c[1] for c in counts)
print("asked", asked, "answered", ok, "lost", asked - ok, flush=True)
