// Package configs holds the files the appliance ships with: the default
// configuration (embedded into the binary), the systemd unit and the
// sysctl settings.
package configs

import _ "embed"

// Default is configs/appliance.yaml, used when no configuration file exists.
//
//go:embed appliance.yaml
var Default []byte
