module distillery.dev/hack/gie

go 1.24.0

require sigs.k8s.io/gateway-api-inference-extension v1.2.0
