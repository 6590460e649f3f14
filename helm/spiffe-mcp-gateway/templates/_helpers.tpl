{{/* Names, labels and the few values several templates derive the same way. */}}

{{- define "smg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "smg.fullname" -}}
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

{{- define "smg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "smg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "smg.labels" -}}
helm.sh/chart: {{ include "smg.chart" . }}
{{ include "smg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "smg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "smg.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "smg.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Where things live inside the pod. */}}
{{- define "smg.configDir" -}}/etc/spiffe-mcp-gateway{{- end }}
{{- define "smg.policyDir" -}}/etc/spiffe-mcp-gateway/policies{{- end }}
{{- define "smg.shadowPolicyDir" -}}/etc/spiffe-mcp-gateway/policies-shadow{{- end }}
{{- define "smg.pinsDir" -}}/etc/spiffe-mcp-gateway/pins{{- end }}
{{/* "true" when pin files are mounted (pins.files or pins.existingConfigMap). */}}
{{- define "smg.pinsEnabled" -}}
{{- if or .Values.pins.existingConfigMap .Values.pins.files }}true{{ end -}}
{{- end }}
{{- define "smg.pinsConfigMap" -}}
{{- default (printf "%s-pins" (include "smg.fullname" .)) .Values.pins.existingConfigMap }}
{{- end }}
{{- define "smg.sessionKeysDir" -}}/etc/spiffe-mcp-gateway/session-keys{{- end }}
{{- define "smg.sessionKeysSecret" -}}
{{- default (printf "%s-session-keys" (include "smg.fullname" .)) .Values.sessions.existingSecret }}
{{- end }}
{{- define "smg.workloadApiDir" -}}/spiffe-workload-api{{- end }}

{{- define "smg.workloadApiSocket" -}}
{{- printf "unix://%s/%s" (include "smg.workloadApiDir" .) .Values.workloadApi.socketName }}
{{- end }}

{{/* The SPIFFE ID ClusterSPIFFEID gives the gateway (for NOTES and docs). */}}
{{- define "smg.spiffeId" -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .Values.trustDomain .Release.Namespace (include "smg.serviceAccountName" .) }}
{{- end }}

{{- define "smg.policiesConfigMap" -}}
{{- default (printf "%s-policies" (include "smg.fullname" .)) .Values.policies.existingConfigMap }}
{{- end }}

{{- define "smg.shadowPoliciesConfigMap" -}}
{{- default (printf "%s-policies-shadow" (include "smg.fullname" .)) .Values.policies.shadow.existingConfigMap }}
{{- end }}

{{/*
The enforced policy files: the chart's policies/ (unless
policies.includeShipped is false), then policies.files over them by name.
A file whose content is empty is left out. Returns a YAML map name -> content.
*/}}
{{- define "smg.policyFiles" -}}
{{- $files := dict }}
{{- if .Values.policies.includeShipped }}
{{- range $path, $_ := .Files.Glob "policies/*" }}
{{- $_ := set $files (base $path) ($.Files.Get $path) }}
{{- end }}
{{- end }}
{{- range $name, $content := .Values.policies.files }}
{{- $_ := set $files $name $content }}
{{- end }}
{{- $out := dict }}
{{- range $name, $content := $files }}
{{- if $content }}
{{- $_ := set $out $name $content }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* The shadow (candidate) set: the enforced files, then policies.shadow.files over them. */}}
{{- define "smg.shadowPolicyFiles" -}}
{{- $files := include "smg.policyFiles" . | fromYaml }}
{{- range $name, $content := .Values.policies.shadow.files }}
{{- if $content }}
{{- $_ := set $files $name $content }}
{{- else }}
{{- $_ := unset $files $name }}
{{- end }}
{{- end }}
{{- toYaml $files }}
{{- end }}
