{{- define "distillery.name" -}}distillery{{- end -}}
{{- define "distillery.fullname" -}}
{{- if contains "distillery" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-distillery" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- define "distillery.labels" -}}
app.kubernetes.io/name: distillery
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "distillery.selector" -}}
app.kubernetes.io/name: distillery
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "distillery.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{/* The rules the operator needs, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "distillery.rules" -}}
- apiGroups: [distillery.dev]
  resources: [distilledmodeldeployments]
  # patch: to consume the one-shot distillery.dev/rollout command annotation.
  verbs: [get, list, watch, patch]
- apiGroups: [distillery.dev]
  resources: [distilledmodeldeployments/status, distilledmodeldeployments/scale]
  verbs: [get, patch]
- apiGroups: [distillery.dev]
  resources: [reasoningroutes]
  verbs: [get, list, watch]
- apiGroups: [distillery.dev]
  resources: [reasoningroutes/status]
  verbs: [get, patch]
- apiGroups: [inference.networking.k8s.io]
  # A ReasoningRoute's tiers; delete: a tier the route no longer has. Its endpoint
  # pickers' Roles grant get, list and watch on these, which the operator must hold.
  resources: [inferencepools]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [inference.networking.x-k8s.io]
  resources: [inferenceobjectives]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  # The endpoint pickers' identities; list: a route's children after a restart, to
  # prune the tiers removed meanwhile.
  resources: [serviceaccounts]
  verbs: [get, list, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  # Each endpoint picker's namespaced Role (read pods, pools, objectives) and binding.
  resources: [roles, rolebindings]
  verbs: [get, list, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  # delete: a retired canary Deployment.
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [get, patch]
- apiGroups: [leaderworkerset.x-k8s.io]
  # Multi-node replicas; delete: a retired canary group set.
  resources: [leaderworkersets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets/scale]
  verbs: [get, patch]
- apiGroups: [""]
  # delete: a retired tier's endpoint picker Service.
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [get, list, watch, create, patch]
- apiGroups: [gateway.networking.k8s.io]
  # delete: a route's HTTPRoute once its spec names no gateway.
  resources: [httproutes]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  # Weight caches (spec.model.cache); delete: a replaced revision's, after its grace.
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [batch]
  # The Jobs that fill weight caches; delete: with a retired cache.
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  # NodeLocal weight caches' pre-pull; delete: another revision's, or the mode changed.
  resources: [daemonsets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  # A running weight-cache fill's progress line, for status.cache.filledBytes.
  resources: [pods/log]
  verbs: [get]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
