# $1: 1 on install, 2 or more on upgrade.
install -d -m 0700 /var/lib/staticpod-puller
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    # Enabled at once; it runs once `staticpod-puller join` has written a usable configuration.
    systemctl enable staticpod-puller.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl start staticpod-puller.service >/dev/null 2>&1 || :
    fi
elif [ -d /run/systemd/system ]; then
    systemctl try-restart staticpod-puller.service >/dev/null 2>&1 || :
fi
