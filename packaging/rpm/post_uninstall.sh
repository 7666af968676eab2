# $1: 0 on removal, 1 on upgrade. The state directory stays (backups of manifests).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
