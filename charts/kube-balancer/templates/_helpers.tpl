{{/*
Names. Kubernetes names are at most 63 characters; every name below stays within that.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "kube-balancer.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of the release's objects: fullnameOverride; else the release name when it already
contains the chart's name (so `helm install kube-balancer` gives "kube-balancer"); else both.
*/}}
{{- define "kube-balancer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "kube-balancer.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The admin Service: `run --peers-service` names it. */}}
{{- define "kube-balancer.adminServiceName" -}}
{{- printf "%s-admin" (include "kube-balancer.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "kube-balancer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "kube-balancer.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* The leader Lease: `run` names it kube-balancer-CLASS unless told otherwise. */}}
{{- define "kube-balancer.leaseName" -}}
{{- printf "kube-balancer-%s" .Values.class }}
{{- end }}

{{- define "kube-balancer.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* HOST:PORT for a Rust socket address: an IPv6 host goes in brackets. */}}
{{- define "kube-balancer.socketAddress" -}}
{{- if contains ":" .address }}
{{- printf "[%s]:%v" .address .port }}
{{- else }}
{{- printf "%s:%v" .address .port }}
{{- end }}
{{- end }}

{{/*
The namespaces `run --namespace` watches, comma-separated; empty for all. With watchNamespaces
set, the release namespace is added: the admin Service's EndpointSlices live there.
*/}}
{{- define "kube-balancer.namespaces" -}}
{{- if .Values.watchNamespaces }}
{{- append .Values.watchNamespaces .Release.Namespace | uniq | join "," }}
{{- end }}
{{- end }}

{{- define "kube-balancer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-balancer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kube-balancer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kube-balancer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
What the controller does with the API, in each namespace it watches (docs/install.md, "RBAC"):
read the BalancerClusters and write their status; read the Services, their EndpointSlices and
the pods' metadata (annotations) to build the member lists; record Events (kube-runtime's
Recorder creates events.k8s.io Events and patches a repeated one).
*/}}
{{- define "kube-balancer.watchRules" -}}
- apiGroups: ["kubebalancer.io"]
  resources: ["balancerclusters"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kubebalancer.io"]
  resources: ["balancerclusters/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["services", "pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.tls.enabled }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- if .Values.gatewayAPI.enabled }}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways", "httproutes", "referencegrants", "backendtlspolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways/status", "httproutes/status", "backendtlspolicies/status"]
  verbs: ["patch"]
# The ConfigMaps BackendTLSPolicies name (their ca.crt), each watched by name.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- end }}

{{/* The Gateway Service: `run --gateway-service` names it. */}}
{{- define "kube-balancer.gatewayServiceName" -}}
{{- printf "%s-gateway" (include "kube-balancer.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* The ServiceAccount that RBAC bindings grant to. */}}
{{- define "kube-balancer.subject" -}}
- kind: ServiceAccount
  name: {{ include "kube-balancer.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/*
The Secret holding the admin server's bearer token (key `token`).
*/}}
{{- define "kube-balancer.adminTokenSecret" -}}
{{- .Values.admin.tokenSecret | default (printf "%s-admin-token" (include "kube-balancer.fullname" . | trunc 51 | trimSuffix "-")) }}
{{- end }}
