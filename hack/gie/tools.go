//go:build tools

// Package gie pins the Gateway API Inference Extension module whose endpoint picker
// (cmd/epp) hack/build-tools.sh builds; see hack/versions.env.
package gie

import _ "sigs.k8s.io/gateway-api-inference-extension/cmd/epp"
