// Package yang holds the appliance's own YANG module, portico.yang: the
// schema of what gNMI serves under origin portico (VIPs, backends, learned
// BGP routes, kernel routes). mgmt/gnmi's tests check every path the server
// serves against it.
package yang

import _ "embed"

// Module is the text of portico.yang.
//
//go:embed portico.yang
var Module string

// Name and Revision identify the module in gNMI Capabilities.
const (
	Name     = "portico"
	Revision = "2026-12-01"
)
