//go:build tools

// The tools the tests build from this module's pinned versions: h2spec, the HTTP/2 conformance
// checker run against the proxy's client side (tests/dataplane/grpc.rs).
package main

import _ "github.com/summerwind/h2spec/cmd/h2spec"
