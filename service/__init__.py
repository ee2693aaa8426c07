"""Running blindkey at boot: systemd units, the launchd plist, install and uninstall."""
