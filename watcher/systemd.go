package watcher

import (
	"context"

	"github.com/coreos/go-systemd/v22/dbus"

	"haproxy-config/reload"
)

// connectSystemd opens the system bus connection the systemd strategy
// reloads through.
func connectSystemd(ctx context.Context) (reload.UnitReloader, error) {
	return dbus.NewSystemConnectionContext(ctx)
}
