{{/* The chart name, or nameOverride. */}}
{{- define "watchcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names: the release name, plus the chart name unless the release already has it. */}}
{{- define "watchcache.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "watchcache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "watchcache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the pods (never change them on upgrade: selectors are immutable). */}}
{{- define "watchcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "watchcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The service account the pods run as. */}}
{{- define "watchcache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "watchcache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "true" when an authentication mode other than none is on. */}}
{{- define "watchcache.authenticates" -}}
{{- $on := false }}
{{- range .Values.authentication }}{{ if ne . "none" }}{{ $on = true }}{{ end }}{{ end }}
{{- if $on }}true{{ end }}
{{- end }}

{{/* "true" when the service account must impersonate (writes under the caller's name). */}}
{{- define "watchcache.impersonates" -}}
{{- $mode := toString .Values.impersonation }}
{{- if eq $mode "true" }}true
{{- else if and (eq $mode "auto") (include "watchcache.authenticates" .) }}true
{{- else if not (has $mode (list "true" "false" "auto")) }}{{ fail "impersonation must be auto, true or false" }}
{{- end }}
{{- end }}

{{/* Where mounted files live in the container. */}}
{{- define "watchcache.paths" -}}
defaults: /etc/watchcache/defaults/defaults.yaml
tokens: /etc/watchcache/tokens
clientCA: /etc/watchcache/client-ca
tls: /etc/watchcache/tls
{{- end }}

{{/* The `watchcache serve` arguments, one per line. `--workers` (a feature still being
built) is passed only when not 1, so the chart runs today's binary unless it is set. */}}
{{- define "watchcache.args" -}}
{{- $v := .Values }}
{{- $paths := include "watchcache.paths" . | fromYaml -}}
- serve
- --bind=0.0.0.0
- --port={{ $v.port }}
- {{ printf "--log-level=%s" $v.logLevel | quote }}
- --shutdown-delay={{ $v.shutdownDelay }}
- --shutdown-grace={{ $v.shutdownGrace }}
{{- range $v.namespaces }}
- {{ printf "--namespace=%s" . | quote }}
{{- end }}
{{- if not $v.cache }}
- --no-cache
{{- end }}
{{- if $v.corsAllowOrigin }}
- {{ printf "--cors-allow-origin=%s" $v.corsAllowOrigin | quote }}
{{- end }}
{{- if $v.defaults }}
- --defaults={{ $paths.defaults }}
{{- end }}
{{- if kindIs "slice" $v.features }}
- {{ printf "--features=%s" (join "," $v.features) | quote }}
{{- end }}
{{- if ne (toString $v.workers) "1" }}
- {{ printf "--workers=%v" $v.workers | quote }}
{{- end }}
{{- range $v.authentication }}
{{- if not (has . (list "kubernetes" "token-file" "x509" "none")) }}
{{- fail (printf "authentication: unknown mode %q (kubernetes, token-file, x509, none)" .) }}
{{- end }}
- --authentication={{ . }}
{{- end }}
{{- if has "token-file" $v.authentication }}
{{- $_ := required "tokenFile.secretName is required with authentication token-file" $v.tokenFile.secretName }}
- --token-auth-file={{ $paths.tokens }}/{{ $v.tokenFile.key }}
{{- end }}
{{- if has "x509" $v.authentication }}
{{- if not (or $v.clientCA.secretName $v.clientCA.configMapName) }}
{{- fail "clientCA.secretName or clientCA.configMapName is required with authentication x509" }}
{{- end }}
{{- $_ := required "tls.secretName is required with authentication x509 (client certificates come over TLS)" $v.tls.secretName }}
- --client-ca-file={{ $paths.clientCA }}/{{ $v.clientCA.key }}
{{- end }}
{{- with $v.authenticationAudiences }}
- {{ printf "--authentication-audiences=%s" (join "," .) | quote }}
{{- end }}
{{- if not $v.anonymousAuth }}
- --anonymous-auth=false
{{- end }}
{{- if not (has $v.authorization (list "none" "kubernetes")) }}
{{- fail "authorization must be none or kubernetes" }}
{{- end }}
{{- if and (not $v.authentication) (eq $v.authorization "kubernetes") }}
{{- fail "authentication is empty, so every caller would be system:anonymous under authorization kubernetes: for the open mode set authorization none (and allowUnauthenticated true); for anonymous callers checked by RBAC say authentication [none]" }}
{{- end }}
{{- if and (not (include "watchcache.authenticates" .)) (not $v.allowUnauthenticated) }}
{{- fail "no authentication mode but none is set, and watchcache refuses to serve the pod's address so (anyone reaching the Service would act with its service account): set authentication (e.g. [kubernetes]), or allowUnauthenticated true for the open mode" }}
{{- end }}
{{- /* Always said when an authentication mode is set, so the server and this value agree
(the server's own default depends on the modes). */}}
{{- if or $v.authentication (ne $v.authorization "none") }}
- --authorization={{ $v.authorization }}
{{- end }}
{{- if $v.allowUnauthenticated }}
- --allow-unauthenticated
{{- end }}
{{- if $v.tls.secretName }}
- --tls-cert-file={{ $paths.tls }}/tls.crt
- --tls-private-key-file={{ $paths.tls }}/tls.key
{{- end }}
{{- if $v.auditLog }}
- {{ printf "--audit-log=%s" $v.auditLog | quote }}
{{- end }}
{{- range $v.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The namespaced rules of the server: what it caches (list and watch), what it passes
through with its own credentials (every verb on Ray resources), and what its KubeRay
features call. One list: a ClusterRole's when every namespace is cached, a Role's in each
namespace of `namespaces` otherwise. */}}
{{- define "watchcache.rules" -}}
# Ray resources: cached (list, watch), and every client request the cache does not answer
# (gets and lists at versions it has not reached, Table forms, writes) passes through.
- apiGroups: ["ray.io"]
  resources: ["rayclusters", "rayjobs", "rayservices", "rayclusters/status", "rayjobs/status", "rayservices/status"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
# Compute templates: ConfigMaps labelled as templates are cached (list, watch); the v1
# compute-template API creates and deletes them.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "delete"]
# KubeRay's Services are cached (list, watch) so that the service proxy passes only them.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
# The Ray dashboard and job submission through the API server's service proxy: GET, POST,
# PUT, PATCH and DELETE map to these verbs.
- apiGroups: [""]
  resources: ["services/proxy"]
  verbs: ["get", "create", "update", "patch", "delete"]
# Events about Ray resources are cached (list, watch); get and list pass through at
# versions the cache has not reached.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["get", "list", "watch"]
# GET /api/v1/namespaces/NAME passes through: kubectl asks it after a 404 to tell "no such
# object" from "no such namespace" (in a Role this allows only that namespace itself).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
{{- end }}

{{/* The cluster-scoped rule: the CRDs of the served Ray resources, read once for their
printer columns (the Table form). Without it Tables pass through to the API server. */}}
{{- define "watchcache.crdRule" -}}
# The CRDs of the served Ray resources, read once for their printer columns (the Table
# form); without this rule Table requests pass through to the API server.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io"]
  verbs: ["get"]
{{- end }}
