//go:build tools

// Package tools pins the LeaderWorkerSet controller (sigs.k8s.io/lws) that
// hack/build-tools.sh builds for the local cluster; its version is in
// hack/versions.env.
package tools

import _ "sigs.k8s.io/lws/cmd"
