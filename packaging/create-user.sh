#!/bin/sh
# Creates the `sipcraft` system user and group when they are missing (`make install` as root).
# Usage: create-user.sh SYSUSERS_FILE
set -eu
if getent passwd sipcraft >/dev/null; then
	exit 0
fi
if command -v systemd-sysusers >/dev/null 2>&1 && [ -f "$1" ]; then
	systemd-sysusers "$1"
else
	useradd --system --user-group --home-dir /var/lib/sipcraft --no-create-home \
		--shell /usr/sbin/nologin --comment "sipcraft SIP server" sipcraft
fi
echo "created the sipcraft system user"
