#!/usr/bin/env bash
# Builds the allowdns OCI image with buildah, from `scratch`: the allowdns
# binary, nft for the init container's ruleset step, the shared libraries both
# load (from this Debian host's packages, listed in the image), and passwd and
# group files naming the allowdns user. No shell, no package manager, nothing
# else an agent could use to leave. No registry is needed.
#
#   deploy/container/build.sh [BINARY] [IMAGE]
#   BINARY: default target/release/allowdns; IMAGE: default localhost/allowdns:0.1.0
#
# Needs root (or a buildah unshare session), buildah, nftables and libcap2-bin.
set -euo pipefail
cd "$(dirname "$0")/../.."

binary=${1:-target/release/allowdns}
image=${2:-localhost/allowdns:0.1.0}
uid=65532

if ! grep -q '^ID=debian' /etc/os-release; then
    echo "build.sh: the libraries are taken from this host's Debian packages; build on Debian" >&2
    exit 1
fi
[ -x "$binary" ] || { echo "build.sh: no executable $binary (cargo build --release)" >&2; exit 1; }
nft=$(command -v nft) || { echo "build.sh: nft not found (apt-get install nftables)" >&2; exit 1; }

container=$(buildah from scratch)
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
root=$(buildah mount "$container")

install -D -m 0755 "$binary" "$root/usr/bin/allowdns"
install -D -m 0755 "$nft" "$root/usr/sbin/nft"
# Each library at the path the loader looks for it, as a plain file.
libs=$( { ldd "$binary"; ldd "$nft"; } | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | sort -u)
for lib in $libs; do install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"; done

# Which Debian package each file came from, for audits and CVE scans.
mkdir -p "$root/usr/share/allowdns"
for f in $nft $libs; do
    real=$(readlink -f "$f")
    pkg=$(dpkg -S "$real" 2>/dev/null | head -1 | cut -d: -f1 || true)
    [ -n "$pkg" ] || pkg=$(dpkg -S "$f" 2>/dev/null | head -1 | cut -d: -f1 || true)
    echo "$f ${pkg:-?} $(dpkg-query -W -f='${Version}' "${pkg%%:*}" 2>/dev/null || true)"
done > "$root/usr/share/allowdns/packages.txt"

mkdir -p "$root/etc" "$root/tmp"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/:/nonexistent\nallowdns:x:%s:%s:allowdns:/:/nonexistent\n' "$uid" "$uid" > "$root/etc/passwd"
printf 'root:x:0:\nallowdns:x:%s:\n' "$uid" > "$root/etc/group"

# A non-root sidecar feeds the pod's sets and binds port 53: the capabilities
# come from the file, and only within the bounding set the pod spec grants.
# Permitted only: allowdns raises them itself (src/ops/privileges.rs), so the
# image still runs, without them, where the engine does not grant them.
setcap cap_net_admin,cap_net_bind_service=p "$root/usr/bin/allowdns"

buildah unmount "$container" >/dev/null
buildah config \
    --user "$uid:$uid" \
    --entrypoint '["/usr/bin/allowdns"]' \
    --cmd '["--help"]' \
    --workingdir / \
    --label org.opencontainers.image.title=allowdns \
    --label org.opencontainers.image.description="Allowlist-only DNS resolver that fences AI agents in" \
    --label org.opencontainers.image.base.name=scratch \
    "$container"
buildah commit --quiet --rm "$container" "$image" >/dev/null
trap - EXIT
echo "built $image"
