# An upstream on loopback that records each question's source port and ID,
# and plays an off-path attacker racing its own answers:
#   spoof_upstream.py IP LOG
# prints "port N" once listening; appends "SRCPORT ID QNAME ASKED" to LOG per
# question over UDP (QNAME in lower case, ASKED as it came: DNS 0x20).
# By the question's first label:
#   wrongid-*    first 64 forged answers (198.51.100.66) from the right port
#                with every other ID near the real one and random ones;
#   wrongport-*  first forged answers with the right ID from another port of
#                this address, and from the same port on 127.0.0.99;
#   guessed-*    first a forged answer with the right ID from the right port
#                (an attacker who guessed both: the positive control);
#   wrongq-*     first a forged answer with the right ID from the right port,
#                for another name (the question's first letter changed);
# then, 50 ms later, the true answer (192.0.2.1).
#   case-*       the true answer at once, its question in upper case;
#   caseforged-* when the name came with an upper-case letter (mixed by DNS
#                0x20; allowdns's retry is in lower case), first a forged answer with the right ID from
#                the right port for the name with every letter's case swapped
#                (an attacker who guessed ID and port, not the case);
#   cname-*      at once a CNAME to www. under the name's parent, then that
#                name's A record, both names compressed against the question
#                (as BIND compresses: whatever the case);
#   tc-*         over UDP an empty answer with TC set; over TCP (same port,
#                logged with " tcp") the true answer.
# Others: the true answer at once.
import random
import socket
import struct
import sys
import threading
import time

ip, log = sys.argv[1], open(sys.argv[2], "a", buffering=1)
TRUE, FORGED = socket.inet_aton("192.0.2.1"), socket.inet_aton("198.51.100.66")
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind((ip, 0))
port = server.getsockname()[1]
other_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
other_port.bind((ip, 0))
other_ip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
other_ip.bind(("127.0.0.99", port))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((ip, port))
tcp.listen(64)
print("port", port, flush=True)
rng = random.Random(7)


def qname_end(msg):
    at = 12
    while msg[at]:
        at += 1 + msg[at]
    return at + 1


def answer(query, qid, address, question=None):
    end = qname_end(query) + 4
    header = struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0)
    record = struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + address
    return header + (question or query[12:end]) + record


def truncated(query, qid):
    end = qname_end(query) + 4
    return struct.pack(">HHHHHH", qid, 0x8380, 1, 0, 0, 0) + query[12:end]


def serve_tcp():
    while True:
        conn, client = tcp.accept()
        with conn:
            conn.settimeout(5)
            try:
                size = struct.unpack(">H", conn.recv(2, socket.MSG_WAITALL))[0]
                query = conn.recv(size, socket.MSG_WAITALL)
                qid = struct.unpack(">H", query[:2])[0]
                log.write(f"{client[1]} {qid} {name_of(query)} tcp\n")
                reply = answer(query, qid, TRUE)
                conn.sendall(struct.pack(">H", len(reply)) + reply)
            except (OSError, struct.error):
                pass


def name_of(query):
    labels, at = [], 12
    while query[at]:
        labels.append(query[at + 1 : at + 1 + query[at]].decode("ascii", "replace").lower())
        at += 1 + query[at]
    return ".".join(labels)


threading.Thread(target=serve_tcp, daemon=True).start()


while True:
    query, client = server.recvfrom(4096)
    if len(query) < 17:
        continue
    qid = struct.unpack(">H", query[:2])[0]
    labels, at = [], 12
    while query[at]:
        labels.append(query[at + 1 : at + 1 + query[at]].decode("ascii", "replace"))
        at += 1 + query[at]
    asked = ".".join(labels)
    labels = [label.lower() for label in labels]
    name = ".".join(labels)
    log.write(f"{client[1]} {qid} {name or '.'} {asked or '.'}\n")
    first = labels[0] if labels else ""
    if first.startswith("wrongid-"):
        ids = {(qid + d) & 0xFFFF for d in range(-16, 17) if d} | {qid ^ 0x8000, qid ^ 1}
        while len(ids) < 64:
            ids.add(rng.randrange(65536))
        ids.discard(qid)
        for other in ids:
            server.sendto(answer(query, other, FORGED), client)
    elif first.startswith("wrongport-"):
        other_port.sendto(answer(query, qid, FORGED), client)
        other_ip.sendto(answer(query, qid, FORGED), client)
    elif first.startswith("guessed-"):
        server.sendto(answer(query, qid, FORGED), client)
    elif first.startswith("wrongq-"):
        end = qname_end(query) + 4
        other = query[12:13] + b"x" + query[14:end]
        server.sendto(answer(query, qid, FORGED, other), client)
    elif first.startswith("caseforged-") and asked != name:
        end = qname_end(query) + 4
        server.sendto(answer(query, qid, FORGED, query[12:end].swapcase()), client)
    elif first.startswith("case-"):
        end = qname_end(query) + 4
        server.sendto(answer(query, qid, TRUE, query[12:end].upper()), client)
        continue
    elif first.startswith("tc-"):
        server.sendto(truncated(query, qid), client)
        continue
    elif first.startswith("cname-"):
        end = qname_end(query) + 4
        parent = 12 + 1 + query[12]
        target = b"\x03www" + struct.pack(">H", 0xC000 | parent)
        header = struct.pack(">HHHHHH", qid, 0x8180, 1, 2, 0, 0)
        cname = struct.pack(">HHHIH", 0xC00C, 5, 1, 60, len(target)) + target
        a = target + struct.pack(">HHIH", 1, 1, 60, 4) + TRUE
        server.sendto(header + query[12:end] + cname + a, client)
        continue
    if first.split("-")[0] in ("wrongid", "wrongport", "guessed", "wrongq", "caseforged"):
        time.sleep(0.05)
    server.sendto(answer(query, qid, TRUE), client)
