{{/*
The gateway's config file (README "Configuration"). Paths are the mounts of
deployment.yaml; workload_api.socket is left out so SPIFFE_ENDPOINT_SOCKET
names the socket.
*/}}
{{- define "smg.gatewayConfig" -}}
{{- $c := .Values.config -}}
{{- $bind := $c.bindAddress -}}
{{- if contains ":" $bind }}{{ $bind = printf "[%s]" $bind }}{{ end -}}
listener:
  address: {{ printf "%s:%d" $bind (int $c.listener.port) | quote }}
  path: {{ $c.listener.path | quote }}
  {{- if $c.listener.jwtSvidCallers.enabled }}
  {{- if $c.userAuth.enabled }}
  {{- fail "config.listener.jwtSvidCallers and config.userAuth cannot both be enabled: both read the Authorization header" }}
  {{- end }}
  jwt_svid_callers:
    {{- with $c.listener.jwtSvidCallers.audience }}
    audience: {{ . | quote }}
    {{- else }} {}
    {{- end }}
  {{- end }}
admin:
  address: {{ printf "%s:%d" $bind (int $c.admin.port) | quote }}
{{- with .Values.workloadApi.svidHint }}
workload_api:
  svid_hint: {{ . | quote }}
{{- end }}
policy:
  dir: {{ include "smg.policyDir" . | quote }}
  {{- if .Values.policies.shadow.enabled }}
  shadow_dir: {{ include "smg.shadowPolicyDir" . | quote }}
  {{- end }}
  watch_interval_ms: {{ int $c.policy.watchIntervalMs }}
  {{- if include "smg.pinsEnabled" . }}
  pins_dir: {{ include "smg.pinsDir" . | quote }}
  {{- else }}
  {{- range (prepend $c.upstreams $c.upstream) }}
  {{- if and .pins (ne (toString .pins) "off") }}
  {{- fail (printf "upstream %s has pins %s but no pin files: set pins.files or pins.existingConfigMap" .name (toString .pins)) }}
  {{- end }}
  {{- end }}
  {{- end }}
{{- if $c.upstreams }}
upstreams:
  {{- range $c.upstreams }}
  - name: {{ .name | quote }}
    url: {{ .url | quote }}
    spiffe_id: {{ .spiffeId | quote }}
    {{- with include "smg.upstreamConnection" . }}{{ . | nindent 4 }}{{ end }}
  {{- end }}
{{- else }}
upstream:
  name: {{ required "config.upstream.name is required" $c.upstream.name | quote }}
  url: {{ required "config.upstream.url is required" $c.upstream.url | quote }}
  spiffe_id: {{ required "config.upstream.spiffeId is required" $c.upstream.spiffeId | quote }}
  {{- if $c.upstream.plaintextLoopback }}
  plaintext_loopback: true
  {{- end }}
  {{- with include "smg.upstreamConnection" $c.upstream }}{{ . | nindent 2 }}{{ end }}
{{- end }}
{{- if $c.aggregate.enabled }}
{{- if not $c.upstreams }}
{{- fail "config.aggregate needs config.upstreams (the list of upstreams it aggregates from)" }}
{{- end }}
aggregate:
  name: {{ $c.aggregate.name | quote }}
  upstreams:
    {{- range required "config.aggregate.upstreams is required" $c.aggregate.upstreams }}
    - {{ . | quote }}
    {{- end }}
{{- end }}
{{- if $c.userAuth.enabled }}
user_auth:
  {{- if eq $c.userAuth.mode "jwks" }}
  jwks_file: {{ printf "%s/jwks.json" (include "smg.configDir" .) | quote }}
  issuer: {{ required "config.userAuth.issuer is required with mode jwks" $c.userAuth.issuer | quote }}
  {{- else }}
  jwt_svid: true
  {{- end }}
  audience: {{ required "config.userAuth.audience is required" $c.userAuth.audience | quote }}
  required: {{ $c.userAuth.required }}
  leeway_seconds: {{ int $c.userAuth.leewaySeconds }}
{{- end }}
audit:
  sink: {{ $c.audit.sink }}
  {{- if eq $c.audit.sink "file" }}
  path: {{ $c.audit.path | quote }}
  {{- end }}
  on_failure: {{ $c.audit.onFailure }}
  fsync: {{ $c.audit.fsync }}
  checkpoint_every_records: {{ int64 $c.audit.checkpointEveryRecords }}
  checkpoint_interval_seconds: {{ int64 $c.audit.checkpointIntervalSeconds }}
limits:
  max_body_bytes: {{ int64 $c.limits.maxBodyBytes }}
  session_idle_timeout_seconds: {{ int64 $c.limits.sessionIdleTimeoutSeconds }}
  max_sessions: {{ int64 $c.limits.maxSessions }}
  {{- with $c.limits.maxSessionsPerIdentity }}
  max_sessions_per_identity: {{ int64 . }}
  {{- end }}
  {{- with $c.limits.perIdentity }}
  per_identity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with $c.connections }}
connections:
  {{- toYaml . | nindent 2 }}
{{- end }}
sessions:
  keys_file: {{ printf "%s/keys" (include "smg.sessionKeysDir" .) | quote }}
  max_lifetime_seconds: {{ int64 $c.sessions.maxLifetimeSeconds }}
  keys_watch_interval_ms: {{ int64 $c.sessions.keysWatchIntervalMs }}
shutdown:
  drain_timeout_seconds: {{ int $c.shutdown.drainTimeoutSeconds }}
log:
  format: {{ $c.log.format }}
  level: {{ $c.log.level | quote }}
{{- if $c.metrics.callerLabels }}
metrics:
  caller_labels: true
{{- end }}
{{- with $c.traces }}
traces:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
An upstream's optional keys (values camelCase -> config snake_case); a 0 or
missing timeout is left out, so the gateway's default applies.
*/}}
{{- define "smg.upstreamConnection" -}}
{{- $u := . -}}
{{- $lines := list -}}
{{- with $u.callerIdHeader }}{{ $lines = append $lines (printf "caller_id_header: %s" (quote .)) }}{{ end -}}
{{- if and $u.pins (ne (toString $u.pins) "off") }}{{ $lines = append $lines (printf "pins: %s" (toString $u.pins)) }}{{ end -}}
{{- range $key, $field := dict "connectTimeoutSeconds" "connect_timeout_seconds" "requestTimeoutSeconds" "request_timeout_seconds" "streamIdleTimeoutSeconds" "stream_idle_timeout_seconds" "poolIdleTimeoutSeconds" "pool_idle_timeout_seconds" "healthCheckIntervalSeconds" "health_check_interval_seconds" -}}
{{- with (get $u $key) }}{{ $lines = append $lines (printf "%s: %d" $field (int .)) }}{{ end -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}
