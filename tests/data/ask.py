# One raw DNS question (A, UDP) from a socket of its own: ask.py HOST PORT NAME wait|leave.
# `wait` reads the reply before exiting; `leave` exits at once, closing the socket.
import socket
import struct
import sys

host, port, name, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
question = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
question += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
question += struct.pack(">HH", 1, 1)
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.sendto(question, (host, port))
if mode == "wait":
    s.settimeout(5)
    reply = s.recv(512)
    print("rcode", reply[3] & 15)
s.close()
