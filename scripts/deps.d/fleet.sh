# The fleet's tests (crates/gateway/tests/store_redis.rs,
# crates/vmgate/tests/fleet.rs): Debian's redis-server (the shared store)
# and haproxy (the load balancer in front of the gateways), each started by
# the tests on a free loopback port. Idempotent; run by scripts/setup.
set -euo pipefail
missing=()
for p in redis-server redis-tools haproxy; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
