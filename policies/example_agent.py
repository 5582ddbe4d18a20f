"""A tiny example agent for `allowdns run` (README): it looks up the names a
travel agent needs, and one it should not. It only resolves; it connects nowhere."""

import socket

for name in ["api.company-internal.com", "weather.service.com", "sketchy-mirror.example.com"]:
    try:
        infos = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)
        print(f"{name}: {', '.join(sorted({i[4][0] for i in infos}))}")
    except socket.gaierror as e:
        print(f"{name}: not resolved ({e.strerror})")
