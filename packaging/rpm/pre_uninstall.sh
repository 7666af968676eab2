# $1: 0 on removal, 1 on upgrade.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable staticpod-puller.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl stop staticpod-puller.service >/dev/null 2>&1 || :
    fi
fi
