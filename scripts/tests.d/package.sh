# The Debian package: it builds, installs, checks its own examples, passes
# systemd-analyze verify, keeps an edited conffile across an upgrade, and
# removes and purges cleanly. Needs root (dpkg); every step asserts.
set -euo pipefail
fail() { echo "[package test] FAILED: $*" >&2; exit 1; }
deb=$(bash scripts/package --profile dev | tail -1)
[ -f "$deb" ] || fail "no package built ($deb)"

listing=$(dpkg-deb -c "$deb")
for f in ./usr/bin/vmgate ./lib/systemd/system/vmgate-agent.service \
         ./lib/systemd/system/vmgate-gateway.service ./lib/systemd/system/vmgate-admin.service \
         ./etc/vmgate/agent.toml ./etc/vmgate/gateway.toml ./etc/vmgate/admin.toml \
         ./usr/share/man/man1/vmgate.1.gz ./usr/share/man/man1/vmgate-gateway.1.gz \
         ./usr/share/bash-completion/completions/vmgate; do
  grep -q " $f\$" <<<"$listing" || fail "$f not in the package"
done
conffiles=$(dpkg-deb -I "$deb" conffiles)
for f in agent gateway admin; do
  grep -qx "/etc/vmgate/$f.toml" <<<"$conffiles" || fail "/etc/vmgate/$f.toml is not a conffile"
done

dpkg -P vmgate >/dev/null 2>&1 || true
dpkg -i "$deb" >/dev/null || fail "dpkg -i"
getent passwd vmgate >/dev/null || fail "no vmgate user"
[ "$(stat -c '%a %U %G' /var/log/vmgate)" = "750 vmgate vmgate" ] || fail "/var/log/vmgate: $(stat -c '%a %U %G' /var/log/vmgate)"
[ "$(stat -c '%a %U %G' /var/lib/vmgate)" = "750 vmgate vmgate" ] || fail "/var/lib/vmgate: $(stat -c '%a %U %G' /var/lib/vmgate)"
[ "$(stat -c '%a %G' /etc/vmgate/gateway.toml)" = "640 vmgate" ] || fail "gateway.toml: $(stat -c '%a %G' /etc/vmgate/gateway.toml)"
/usr/bin/vmgate --version >/dev/null || fail "the installed binary does not run"

# The shipped examples parse: --check gets past the schema to the files
# they name (not made yet on this machine) and names each by its key.
for s in agent gateway admin; do
  set +e
  err=$(/usr/bin/vmgate "$s" --config "/etc/vmgate/$s.toml" --check 2>&1 >/dev/null)
  code=$?
  set -e
  [ "$code" = 1 ] || fail "$s --check exited $code: $err"
  grep -q "^/etc/vmgate/$s.toml: \(tls\.\)\?cert: " <<<"$err" || fail "$s --check: $err"
  ! grep -qi "invalid configuration\|unknown field\|expected" <<<"$err" || fail "$s example does not parse: $err"
done

out=$(systemd-analyze verify --man=no /lib/systemd/system/vmgate-agent.service \
  /lib/systemd/system/vmgate-gateway.service /lib/systemd/system/vmgate-admin.service 2>&1) \
  || fail "systemd-analyze verify: $out"
! grep -q "vmgate-" <<<"$out" || fail "systemd-analyze verify warns: $out"

# An operator's edit survives an upgrade (a reinstall of the package).
echo "# edited by the operator" >> /etc/vmgate/gateway.toml
dpkg -i "$deb" >/dev/null || fail "upgrade"
grep -q "edited by the operator" /etc/vmgate/gateway.toml || fail "the edited conffile was replaced"

dpkg -r vmgate >/dev/null || fail "dpkg -r"
[ ! -e /usr/bin/vmgate ] || fail "/usr/bin/vmgate left after remove"
[ -e /etc/vmgate/gateway.toml ] || fail "remove took the configuration (only purge may)"
dpkg -P vmgate >/dev/null || fail "dpkg -P"
[ ! -e /etc/vmgate/gateway.toml ] || fail "purge left /etc/vmgate/gateway.toml"
[ ! -e /var/log/vmgate ] || fail "purge left /var/log/vmgate"
echo "[package test] ok: $deb"
