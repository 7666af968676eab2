#!/usr/bin/env bash
# Package tests (run by .ci/run, as root on a throwaway machine): build the .deb and the .rpm,
# inspect them, lint the .deb, install, upgrade and remove it, and check the systemd unit.
# Installs what it needs: lintian and rpm from Debian, cargo-deb and cargo-generate-rpm from
# crates.io. PROFILE (default release) picks the build profile; `dist` is what ships.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "package test FAILED: $*" >&2
  exit 1
}

missing=()
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v rpm >/dev/null 2>&1 || missing+=(rpm)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v man >/dev/null 2>&1 || missing+=(man-db)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked --version 3.8.0 cargo-deb
command -v cargo-generate-rpm >/dev/null 2>&1 || cargo install --locked --version 0.21.1 cargo-generate-rpm

export PROFILE=${PROFILE:-release}
DEB_REVISION=1 packaging/build-packages.sh
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
deb=target/packages/staticpod-puller_${version}-1_amd64.deb
rpm=$(ls target/packages/staticpod-puller-"${version}"-1.*.rpm)
[ -f "$deb" ] || fail "no $deb"

echo "--- dpkg-deb: control and contents"
dpkg-deb --info "$deb"
contents=$(dpkg-deb --contents "$deb")
echo "$contents"
for path in ./usr/bin/staticpod-puller \
  ./lib/systemd/system/staticpod-puller.service \
  ./etc/staticpod-puller/config.yaml \
  ./usr/share/man/man1/staticpod-puller.1.gz \
  ./usr/share/man/man1/staticpod-puller-join.1.gz \
  ./usr/share/bash-completion/completions/staticpod-puller \
  ./usr/share/zsh/vendor-completions/_staticpod-puller \
  ./usr/share/fish/vendor_completions.d/staticpod-puller.fish \
  ./usr/share/doc/staticpod-puller/copyright; do
  grep -qF " $path" <<<"$contents" || grep -qF " ${path/.\/lib/.\/usr\/lib}" <<<"$contents" ||
    fail "$path is not in the .deb"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/staticpod-puller/config.yaml ||
  fail "config.yaml is not a conffile"

echo "--- lintian"
lintian --fail-on error --suppress-tags-from-file packaging/debian/lintian-suppressions "$deb"

echo "--- dpkg -i"
dpkg --purge staticpod-puller >/dev/null 2>&1 || true
dpkg -i "$deb"
/usr/bin/staticpod-puller --version
[ "$(stat -c %a /var/lib/staticpod-puller)" = 700 ] || fail "state directory missing or not 0700"
unit=$(ls /lib/systemd/system/staticpod-puller.service /usr/lib/systemd/system/staticpod-puller.service 2>/dev/null | head -1)
[ -L /etc/systemd/system/multi-user.target.wants/staticpod-puller.service ] || fail "the service is not enabled"
# Not joined yet: the agent exits with EX_CONFIG (which the unit does not restart on), saying so.
set +e
out=$(/usr/bin/staticpod-puller run 2>&1)
code=$?
set -e
[ "$code" = 78 ] || fail "run before join exited $code, expected 78: $out"
grep -q "has not been joined yet" <<<"$out" || fail "run before join did not say why: $out"
# The packaged build carries no dev cluster, and says so.
set +e
out=$(/usr/bin/staticpod-puller demo 2>&1)
code=$?
set -e
[ "$code" != 0 ] || fail "demo on the packaged build succeeded: $out"
grep -q "has no dev cluster" <<<"$out" || fail "demo on the packaged build did not say why: $out"

echo "--- systemd-analyze verify and security"
systemd-analyze verify "$unit"
security=$(systemd-analyze security --offline=yes "$unit")
echo "$security"
exposure=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p' <<<"$security")
echo "exposure: $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e < 3.0) }' || fail "exposure $exposure is not under 3.0"

echo "--- upgrade keeps an edited conffile"
echo "# edited by the operator" >>/etc/staticpod-puller/config.yaml
edited=$(sha256sum /etc/staticpod-puller/config.yaml)
DEB_REVISION=2 packaging/build-packages.sh >/dev/null
dpkg -i --force-confold "target/packages/staticpod-puller_${version}-2_amd64.deb"
dpkg-query -W -f='${Version}\n' staticpod-puller | grep -qx "${version}-2" || fail "upgrade not installed"
[ "$(sha256sum /etc/staticpod-puller/config.yaml)" = "$edited" ] || fail "the upgrade overwrote the edited config"

echo "--- dpkg -r, then purge"
dpkg -r staticpod-puller
[ ! -e /usr/bin/staticpod-puller ] || fail "binary left after remove"
[ -f /etc/staticpod-puller/config.yaml ] || fail "remove must keep the conffile"
dpkg --purge staticpod-puller
[ ! -e /etc/staticpod-puller/config.yaml ] || fail "purge left the conffile"
[ ! -e /var/lib/staticpod-puller ] || fail "purge left the state directory"

echo "--- rpm"
files=$(rpm -qlp "$rpm")
echo "$files"
for path in /usr/bin/staticpod-puller /usr/lib/systemd/system/staticpod-puller.service \
  /etc/staticpod-puller/config.yaml /usr/share/man/man1/staticpod-puller.1.gz \
  /usr/share/bash-completion/completions/staticpod-puller; do
  grep -qx "$path" <<<"$files" || fail "$path is not in the .rpm"
done
rpm -qcp "$rpm" | grep -qx /etc/staticpod-puller/config.yaml || fail "config.yaml is not a %config file of the .rpm"
scripts=$(rpm -qp --scripts "$rpm")
echo "$scripts"
grep -q "systemctl enable staticpod-puller.service" <<<"$scripts" || fail "the .rpm does not enable the service"
grep -q "install -d -m 0700 /var/lib/staticpod-puller" <<<"$scripts" || fail "the .rpm does not create the state directory"
grep -q "disable staticpod-puller.service" <<<"$scripts" || fail "the .rpm does not disable the service on removal"

echo "package tests passed (exposure $exposure)"
