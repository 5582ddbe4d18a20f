#!/usr/bin/env python3
"""Generates tests/data/legit-names.txt: hard but legitimate DNS names.

Deterministic (fixed seed), so the committed file can be regenerated and
diffed: `python3 tests/data/gen-legit-names.py > tests/data/legit-names.txt`.

Each shape copies a real service's naming: random-looking labels that a
naive tunnel detector flags, in the volumes one busy agent might ask for.
The exfiltration budget must let all of them through without an alert
(tests/it/exfil.rs replays the file through the real binary).
"""
import random
import uuid

rng = random.Random(20261129)
LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
HEX = "0123456789abcdef"
REGIONS = [
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2",
    "eu-central-1", "ap-south-1", "ap-northeast-1", "ap-southeast-2", "sa-east-1",
    "ca-central-1",
]
GCP_REGIONS = ["us-east1", "us-central1", "europe-west1", "asia-south1"]
WORDS = [
    "acme", "prod", "staging", "logs", "assets", "backup", "data", "ml", "models",
    "artifacts", "media", "static", "exports", "reports", "team", "build", "cache",
    "images", "raw", "archive", "events", "billing", "uploads", "public",
]


def rand(alphabet, n):
    return "".join(rng.choice(alphabet) for _ in range(n))


def uid():
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


names = []

# CloudFront distributions: d + 13 base36 characters.
names += [f"d{rand(LOWER_ALNUM, 13)}.cloudfront.net" for _ in range(600)]

# API Gateway: a 10-character id per API, per region.
names += [
    f"{rand(LOWER_ALNUM, 10)}.execute-api.{rng.choice(REGIONS)}.amazonaws.com"
    for _ in range(400)
]

# YouTube video servers: r<N>---sn-<8 chars>.googlevideo.com, all one domain.
SN = "abcdefghklnrstuyz0123456789"
names += [
    f"{rng.choice(['r', 'rr'])}{rng.randint(1, 20)}---sn-{rand(SN, 8)}.googlevideo.com"
    for _ in range(300)
]

# UUID-named hosts: Postman mock servers (each its own registrable domain)
# and DataStax Astra databases (all under datastax.com).
names += [f"{uid()}.mock.pstmn.io" for _ in range(200)]
names += [
    f"{uid()}-{rng.choice(GCP_REGIONS)}.apps.astra.datastax.com" for _ in range(40)
]


def bucket():
    parts = rng.sample(WORDS, rng.randint(2, 3))
    if rng.random() < 0.6:
        parts.append(rand(HEX, rng.choice([6, 8, 12])))
    return "-".join(parts)


# S3 buckets, virtual-hosted style, global and regional endpoints.
for _ in range(500):
    style = rng.random()
    if style < 0.4:
        names.append(f"{bucket()}.s3.amazonaws.com")
    elif style < 0.8:
        names.append(f"{bucket()}.s3.{rng.choice(REGIONS)}.amazonaws.com")
    else:
        names.append(f"{bucket()}.s3.dualstack.{rng.choice(REGIONS)}.amazonaws.com")

# Azure storage accounts: 3-24 lower-case letters and digits.
for _ in range(400):
    account = rng.choice(WORDS) + rand(LOWER_ALNUM, rng.randint(6, 16))
    service = rng.choice(["blob", "blob", "blob", "queue", "table", "file"])
    names.append(f"{account[:24]}.{service}.core.windows.net")

# Azure Front Door endpoints: <name>-<hash>.z01.azurefd.net.
names += [
    f"{rng.choice(WORDS)}-{rand(LOWER_ALNUM + 'ABCDEFGH', 16).lower()}.z01.azurefd.net"
    for _ in range(200)
]

# Cloudflare R2 public buckets: pub-<32 hex>.r2.dev.
names += [f"pub-{rand(HEX, 32)}.r2.dev" for _ in range(200)]

# Elastic Load Balancers: <name>-<digits>.<region>.elb.amazonaws.com.
names += [
    f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{rng.randint(10**8, 10**10)}"
    f".{rng.choice(REGIONS)}.elb.amazonaws.com"
    for _ in range(200)
]

# Akamai edge hosts, all under akamaiedge.net.
names += [
    f"e{rng.randint(1000, 99999)}.{rand('abcdefgx', 1)}{rng.choice(['', 'sc', 'scd', 'scb'])}.akamaiedge.net"
    for _ in range(200)
]

seen = set()
for name in names:
    if name not in seen:
        seen.add(name)
        print(name)
