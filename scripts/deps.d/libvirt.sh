#!/usr/bin/env bash
# libvirt for the agent's `libvirt` backend and its tests: the daemons, the
# QEMU driver, virsh, and the headers the `virt` crate links against.
#
# Configured to run QEMU domains as root without a security driver, cgroups
# or mount namespaces, because CI and developer machines are containers
# without systemd, cgroup delegation or AppArmor. Idempotent.
# Starting the daemons is scripts/libvirt-up (the tests call it too).
set -euo pipefail
SUDO="${SUDO:-}"

PKGS="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[libvirt] apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The QEMU driver looks this account up at start even when told to run
# domains as root; Debian creates it in libvirt-daemon-system, which pulls
# in systemd units we do not want.
getent group libvirt-qemu >/dev/null || $SUDO groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  $SUDO useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --no-create-home \
    --shell /usr/sbin/nologin libvirt-qemu

conf=/etc/libvirt/qemu.conf
$SUDO mkdir -p /etc/libvirt
$SUDO touch "$conf"
set_conf() { # key value: replaces an active or commented-out line, or appends
  local key="$1" value="$2"
  if grep -Eq "^[[:space:]]*${key}[[:space:]]*=" "$conf"; then
    $SUDO sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*|${key} = ${value}|" "$conf"
  else
    echo "${key} = ${value}" | $SUDO tee -a "$conf" >/dev/null
  fi
}
set_conf security_driver '"none"'
set_conf cgroup_controllers '[ ]'
set_conf namespaces '[ ]'
set_conf user '"root"'
set_conf group '"root"'

$SUDO mkdir -p /var/log/libvirt /var/lib/libvirt/qemu /var/run/libvirt
