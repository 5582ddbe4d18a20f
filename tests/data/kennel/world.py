# The test world's services: TCP 8080 and 9090 and UDP 9999 echo on every
# address (v4 and v6), TCP 7070 on loopback only, Unix sockets at argv paths.
import os, socket, sys, threading

def tcp(addr, port, fam=socket.AF_INET6):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(64)
    def loop():
        while True:
            c, _ = s.accept()
            c.sendall(b"hello\n")
            c.close()
    threading.Thread(target=loop, daemon=True).start()

def udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::", port))
    def loop():
        while True:
            data, peer = s.recvfrom(512)
            s.sendto(data, peer)
    threading.Thread(target=loop, daemon=True).start()

def unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o777)
    s.listen(8)
    def loop():
        while True:
            c, _ = s.accept()
            c.close()
    threading.Thread(target=loop, daemon=True).start()

tcp("::", 8080)
tcp("::", 9090)
udp(9999)
tcp("127.0.0.1", 7070, socket.AF_INET)
for path in sys.argv[1:]:
    unix(path)
print("ready", flush=True)
threading.Event().wait()
