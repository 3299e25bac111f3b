#!/bin/sh
# Installs a box from the qc-box folder `qc package` makes, as root: checks every file against SHA256SUMS,
# creates /opt/qc/venv and installs the project's wheel into it (from ./wheels with no package index when
# the folder has them), puts the bundle and the config in place and checks both, creates the `qc` user in
# the gpio, video and plugdev groups (those the box has: GPIO, cameras, a Coral USB Accelerator) and
# enables the service.
#
#   tar xzf box.tar.gz && sudo qc-box/install.sh
#
# QC_ROOT stages everything under another root (the unit is then enabled there, not started). PYTHON is
# the interpreter (default python3); the venv sees the system's packages (python3-picamera2, python3-gi)
# unless QC_SYSTEM_SITE_PACKAGES=0.
set -eu
cd "$(dirname "$0")"
sha256sum --quiet --check SHA256SUMS

root=${QC_ROOT:-}
python=${PYTHON:-python3}
venv=$root/opt/qc/venv
extras=$(cat extras)
wheel=$(ls qc_inspect-*.whl)

echo "qc-box: virtual environment $venv ($extras)"
if [ "${QC_SYSTEM_SITE_PACKAGES:-1}" = 1 ]; then
    "$python" -m venv --system-site-packages "$venv"
else
    "$python" -m venv "$venv"
fi
if [ -d wheels ]; then
    "$venv/bin/pip" install --quiet --no-index --find-links wheels "./$wheel[$extras]"
else
    "$venv/bin/pip" install --quiet "./$wheel[$extras]"
fi

echo "qc-box: bundle, config and unit"
mkdir -p "$root/opt/qc" "$root/etc/qc" "$root/var/lib/qc" "$root/etc/systemd/system"
rm -rf "$root/opt/qc/bundle.new" "$root/opt/qc/bundle.old"
cp -r bundle "$root/opt/qc/bundle.new"
"$venv/bin/qc" bundle verify "$root/opt/qc/bundle.new" > /dev/null
if [ -d "$root/opt/qc/bundle" ]; then mv "$root/opt/qc/bundle" "$root/opt/qc/bundle.old"; fi
mv "$root/opt/qc/bundle.new" "$root/opt/qc/bundle"
install -m 0640 edge.yaml "$root/etc/qc/edge.yaml"
"$venv/bin/qc" config check "$root/etc/qc/edge.yaml" --bundle "$root/opt/qc/bundle"
install -m 0644 qc-inspect.service "$root/etc/systemd/system/qc-inspect.service"

if ! getent passwd qc > /dev/null; then
    groups=
    for group in gpio video plugdev; do
        if getent group "$group" > /dev/null; then groups=$groups${groups:+,}$group; fi
    done
    echo "qc-box: user qc (groups: ${groups:-none})"
    useradd --system --no-create-home --shell /usr/sbin/nologin ${groups:+--groups "$groups"} qc
fi
chown -R qc "$root/var/lib/qc"
chgrp qc "$root/etc/qc/edge.yaml"

if [ -n "$root" ]; then
    systemctl --root="$root" enable qc-inspect.service
else
    systemctl daemon-reload
    systemctl enable --now qc-inspect.service
fi
echo "qc-box: installed; systemctl status qc-inspect, journalctl -u qc-inspect -f"
