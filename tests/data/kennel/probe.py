# probe.py KIND HOST [PORT]: exit 0 when the probe gets through, 1 otherwise.
import socket, struct, sys

kind, host = sys.argv[1], sys.argv[2]
port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if kind == "tcp":
        s = socket.create_connection((host, port), timeout=3)
        assert s.recv(16)
    elif kind == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"x", (host, port))
        assert s.recv(16)
    elif kind == "icmp":
        proto = socket.IPPROTO_ICMPV6 if fam == socket.AF_INET6 else socket.IPPROTO_ICMP
        s = socket.socket(fam, socket.SOCK_DGRAM, proto)
        s.settimeout(3)
        kind_byte = 128 if fam == socket.AF_INET6 else 8
        s.sendto(struct.pack("!BBHHH", kind_byte, 0, 0, 0, 1) + b"ping", (host, 0))
        assert s.recv(64)
    elif kind == "packet":
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    elif kind == "raw":
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    elif kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(host)
    else:
        sys.exit(2)
except Exception as e:
    print(f"{kind} {host} {port}: {e}", file=sys.stderr)
    sys.exit(1)
