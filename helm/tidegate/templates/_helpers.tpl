{{/*
Helpers of the tidegate chart.

Templates meant for app charts (sidecar mode) take the tidegate chart's own context, which an
app chart that lists tidegate as a dependency gets as `.Subcharts.tidegate` (Helm 3.12+):
  tidegate.sidecar                          the gateway container (one list item)
  tidegate.sidecar.volumes                  the pod volumes it needs (list items)
  tidegate.sidecar.appEnv                   OPENAI_BASE_URL / ANTHROPIC_BASE_URL for the app
  tidegate.terminationGracePeriodSeconds    the pod grace period the gateway needs
They read only .Values, .Release and .Chart (Name, Version, AppVersion).
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "tidegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters because some Kubernetes name fields are
limited to that (DNS naming). The release name alone is used if it already contains the name.
*/}}
{{- define "tidegate.fullname" -}}
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

{{/* Chart name and version, as used by the helm.sh/chart label. */}}
{{- define "tidegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "tidegate.labels" -}}
helm.sh/chart: {{ include "tidegate.chart" . }}
{{ include "tidegate.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels. */}}
{{- define "tidegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tidegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "tidegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tidegate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Resource names. */}}
{{- define "tidegate.configMapName" -}}
{{- printf "%s-config" (include "tidegate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tidegate.adminTokenSecretName" -}}
{{- if .Values.adminToken.existingSecret }}
{{- .Values.adminToken.existingSecret }}
{{- else }}
{{- printf "%s-admin-token" (include "tidegate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "tidegate.adminTokenSecretKey" -}}
{{- if .Values.adminToken.existingSecret }}
{{- required "adminToken.existingSecretKey is required with adminToken.existingSecret" .Values.adminToken.existingSecretKey }}
{{- else }}
{{- print "token" }}
{{- end }}
{{- end }}

{{- define "tidegate.providerKeysSecretName" -}}
{{- printf "%s-provider-keys" (include "tidegate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Secret for a providerKeys.env / providerKeys.files entry: its secretName, else
providerKeys.existingSecret, else the chart's provider-keys Secret (providerKeys.values).
Call with (dict "entry" $entry "what" "providerKeys.env[0]" "root" $).
*/}}
{{- define "tidegate.keySecretName" -}}
{{- $root := .root }}
{{- if get .entry "secretName" }}
{{- get .entry "secretName" }}
{{- else if $root.Values.providerKeys.existingSecret }}
{{- $root.Values.providerKeys.existingSecret }}
{{- else if $root.Values.providerKeys.values }}
{{- include "tidegate.providerKeysSecretName" $root }}
{{- else }}
{{- fail (printf "%s: no secretName, and neither providerKeys.existingSecret nor providerKeys.values is set" .what) }}
{{- end }}
{{- end }}

{{/* Image reference: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "tidegate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (toString (.Values.image.tag | default .Chart.AppVersion)) }}
{{- end }}
{{- end }}

{{/* Port names: plain in deployment mode; prefixed in sidecar mode to avoid clashing with the app's. */}}
{{- define "tidegate.httpPortName" -}}
{{- if eq .Values.mode "sidecar" }}tg-http{{ else }}http{{ end }}
{{- end }}
{{- define "tidegate.adminPortName" -}}
{{- if eq .Values.mode "sidecar" }}tg-admin{{ else }}admin{{ end }}
{{- end }}

{{/* Data plane bind address. */}}
{{- define "tidegate.listenAddress" -}}
{{- if .Values.server.listenAddress }}
{{- .Values.server.listenAddress }}
{{- else if eq .Values.mode "sidecar" }}
{{- print "127.0.0.1" }}
{{- else }}
{{- print "0.0.0.0" }}
{{- end }}
{{- end }}

{{/* host:port string for an address that may be IPv6. */}}
{{- define "tidegate.hostPort" -}}
{{- $host := index . 0 }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- printf "[%s]:%d" $host (int (index . 1)) }}
{{- else }}
{{- printf "%s:%d" $host (int (index . 1)) }}
{{- end }}
{{- end }}

{{/* Loopback host an app in the same pod uses to reach the data plane. */}}
{{- define "tidegate.loopbackHost" -}}
{{- $addr := include "tidegate.listenAddress" . }}
{{- if or (eq $addr "::1") (eq $addr "[::1]") }}
{{- print "[::1]" }}
{{- else }}
{{- print "127.0.0.1" }}
{{- end }}
{{- end }}

{{/*
The gateway config file (YAML). server.listen / admin_listen / shutdown_grace / shutdown_delay come from the
`server` values; the rest from `config`. Fails on inline API keys and chart-managed keys.
*/}}
{{- define "tidegate.config" -}}
{{- $v := .Values }}
{{- $c := $v.config }}
{{- $cfg := omit (deepCopy $c) "label" "server" "state" "logging" "providers" "models" "routes" }}
{{- with $c.label }}
{{- $_ := set $cfg "label" (toString .) }}
{{- end }}
{{- $server := deepCopy ($c.server | default dict) }}
{{- range $k := list "listen" "admin_listen" "shutdown_grace" "shutdown_delay" }}
{{- if hasKey $server $k }}
{{- fail (printf "config.server.%s is set by the chart: use the server.* values (listenAddress, adminListenAddress, port, adminPort, shutdownGrace, shutdownDelay)" $k) }}
{{- end }}
{{- end }}
{{- $_ := set $server "listen" (include "tidegate.hostPort" (list (include "tidegate.listenAddress" .) $v.server.port)) }}
{{- $_ := set $server "admin_listen" (include "tidegate.hostPort" (list $v.server.adminListenAddress $v.server.adminPort)) }}
{{- $_ := set $server "shutdown_grace" (toString $v.server.shutdownGrace) }}
{{- $_ := set $server "shutdown_delay" (include "tidegate.shutdownDelay" .) }}
{{- $_ := set $cfg "server" $server }}
{{- with $c.state }}
{{- $state := deepCopy . }}
{{- if and (hasKey $state "dir") (ne (toString (get $state "dir")) "/var/lib/tidegate") }}
{{- fail "config.state.dir is set by the chart: the state directory is /var/lib/tidegate (an emptyDir)" }}
{{- end }}
{{- $_ := set $state "dir" "/var/lib/tidegate" }}
{{- $_ := set $cfg "state" $state }}
{{- end }}
{{- with $c.logging }}
{{- $_ := set $cfg "logging" (deepCopy .) }}
{{- end }}
{{- if and (empty $c.providers) (empty $c.routes) }}
{{- $_ := set $cfg "providers" (dict "sim" (dict "kind" "mock")) }}
{{- $_ := set $cfg "routes" (dict "chat" (dict "default" true "targets" (list (dict "provider" "sim" "model" "ok")))) }}
{{- else }}
{{- $_ := set $cfg "providers" (deepCopy ($c.providers | default dict)) }}
{{- $_ := set $cfg "routes" (deepCopy ($c.routes | default dict)) }}
{{- end }}
{{- with $c.models }}
{{- $_ := set $cfg "models" (deepCopy .) }}
{{- end }}
{{- range $name, $p := $cfg.providers }}
{{- if not (kindIs "map" $p) }}
{{- fail (printf "config.providers.%s must be a map" $name) }}
{{- end }}
{{- range $k := list "api_key" "apiKey" "key" "token" }}
{{- if hasKey $p $k }}
{{- fail (printf "config.providers.%s.%s: API keys never go in the ConfigMap; set api_key_env or api_key_file and wire the key from a Secret with providerKeys.env / providerKeys.files" $name $k) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Checks across values that a schema cannot express. Renders nothing; fails with a message.
*/}}
{{- define "tidegate.validate" -}}
{{- $v := .Values }}
{{- if not (has $v.mode (list "deployment" "sidecar")) }}
{{- fail (printf "mode %q: expected deployment or sidecar" $v.mode) }}
{{- end }}
{{- if and (eq $v.mode "deployment") (hasPrefix "127." (include "tidegate.listenAddress" .)) }}
{{- fail "server.listenAddress is a loopback address in deployment mode: the Service could not reach the data plane" }}
{{- end }}
{{- $admin := toString $v.server.adminListenAddress }}
{{- if or (hasPrefix "127." $admin) (has $admin (list "::1" "[::1]" "localhost" "")) }}
{{- fail (printf "server.adminListenAddress %q: kubelet probes connect to the pod IP, so the admin plane cannot bind loopback" $admin) }}
{{- end }}
{{- if eq (int $v.server.port) (int $v.server.adminPort) }}
{{- fail "server.port and server.adminPort must differ" }}
{{- end }}
{{- $_ := include "tidegate.terminationGracePeriodSeconds" . }}
{{- $cfg := include "tidegate.config" . | fromYaml }}
{{- $envNames := list "TIDEGATE_ADMIN_TOKEN" }}
{{- range $i, $e := $v.providerKeys.env }}
{{- $what := printf "providerKeys.env[%d]" $i }}
{{- $_ := required (printf "%s.name is required" $what) (get $e "name") }}
{{- $_ := required (printf "%s.secretKey is required" $what) (get $e "secretKey") }}
{{- if has $e.name $envNames }}
{{- fail (printf "%s: env var %s is defined twice" $what $e.name) }}
{{- end }}
{{- $envNames = append $envNames $e.name }}
{{- $secret := include "tidegate.keySecretName" (dict "entry" $e "what" $what "root" $) }}
{{- if and (eq $secret (include "tidegate.providerKeysSecretName" $)) (not (hasKey $v.providerKeys.values $e.secretKey)) }}
{{- fail (printf "%s: key %q is not in providerKeys.values" $what $e.secretKey) }}
{{- end }}
{{- end }}
{{- range $v.extraEnv }}
{{- $envNames = append $envNames (get . "name") }}
{{- end }}
{{- $mounts := list }}
{{- range $i, $f := $v.providerKeys.files }}
{{- $what := printf "providerKeys.files[%d]" $i }}
{{- $_ := required (printf "%s.name is required" $what) (get $f "name") }}
{{- $_ := required (printf "%s.mountPath is required" $what) (get $f "mountPath") }}
{{- $_ := include "tidegate.keySecretName" (dict "entry" $f "what" $what "root" $) }}
{{- $mounts = append $mounts (trimSuffix "/" $f.mountPath) }}
{{- end }}
{{- range $v.extraVolumeMounts }}
{{- $mounts = append $mounts (trimSuffix "/" (get . "mountPath")) }}
{{- end }}
{{- range $name, $p := $cfg.providers }}
{{- with get $p "api_key_env" }}
{{- if not (has . $envNames) }}
{{- fail (printf "config.providers.%s.api_key_env is %s, but no providerKeys.env (or extraEnv) entry provides it" $name .) }}
{{- end }}
{{- end }}
{{- with get $p "api_key_file" }}
{{- $file := . }}
{{- $found := false }}
{{- range $mounts }}
{{- if hasPrefix (printf "%s/" .) $file }}
{{- $found = true }}
{{- end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "config.providers.%s.api_key_file is %s, but no providerKeys.files (or extraVolumeMounts) entry mounts a directory containing it" $name $file) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checksum of the config's static sections (server, state, circuit_breaker): tidegate reads them
once at start, so a change must roll the pods even when rollOnConfigChange is false (the rest
of the config hot-reloads).
*/}}
{{- define "tidegate.staticConfigChecksum" -}}
{{- pick (include "tidegate.config" . | fromYaml) "server" "state" "circuit_breaker" | toYaml | sha256sum }}
{{- end }}

{{/*
The checksum annotations for a pod running tidegate: checksum/static-config always,
checksum/config too when rollOnConfigChange. App charts include it in their pod template's
annotations (sidecar mode); the chart's own pods get it through tidegate.podAnnotations.
*/}}
{{- define "tidegate.sidecar.podAnnotations" -}}
checksum/static-config: {{ include "tidegate.staticConfigChecksum" . }}
{{- if .Values.rollOnConfigChange }}
checksum/config: {{ include "tidegate.config" . | sha256sum }}
{{- end }}
{{- end }}

{{/* Pod template annotations: podAnnotations, plus the checksum annotations. */}}
{{- define "tidegate.podAnnotations" -}}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{ include "tidegate.sidecar.podAnnotations" . }}
{{- end }}

{{/*
The gateway container, as one list item. Deployment mode puts it in `containers`; sidecar mode
(tidegate.sidecar) in `initContainers` with restartPolicy: Always, or in `containers` when
sidecar.native is false.
*/}}
{{- define "tidegate.container" -}}
{{- include "tidegate.checkKubeVersion" . }}
{{- $v := .Values }}
{{- $native := and (eq $v.mode "sidecar") $v.sidecar.native -}}
- name: {{ $v.containerName }}
  image: {{ include "tidegate.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  args:
    - serve
    - --config
    - /etc/tidegate/tidegate.yaml
    - --state-dir
    - /var/lib/tidegate
  ports:
    - name: {{ include "tidegate.httpPortName" . }}
      containerPort: {{ $v.server.port }}
      protocol: TCP
    - name: {{ include "tidegate.adminPortName" . }}
      containerPort: {{ $v.server.adminPort }}
      protocol: TCP
  env:
    - name: TIDEGATE_ADMIN_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ include "tidegate.adminTokenSecretName" . }}
          key: {{ include "tidegate.adminTokenSecretKey" . }}
    {{- range $i, $e := $v.providerKeys.env }}
    - name: {{ $e.name }}
      valueFrom:
        secretKeyRef:
          name: {{ include "tidegate.keySecretName" (dict "entry" $e "what" (printf "providerKeys.env[%d]" $i) "root" $) }}
          key: {{ $e.secretKey }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if $v.probes.startup.enabled }}
  startupProbe:
    httpGet:
      path: /readyz
      port: {{ include "tidegate.adminPortName" . }}
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  {{- end }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ include "tidegate.adminPortName" . }}
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ include "tidegate.adminPortName" . }}
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
  {{- if gt (int $v.lifecycle.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ $v.lifecycle.preStopSleepSeconds }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: tidegate-config
      mountPath: /etc/tidegate
      readOnly: true
    - name: tidegate-state
      mountPath: /var/lib/tidegate
    {{- range $v.providerKeys.files }}
    - name: tidegate-key-{{ .name }}
      mountPath: {{ .mountPath }}
      readOnly: true
    {{- end }}
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The pod volumes the gateway container mounts (list items). */}}
{{- define "tidegate.volumes" -}}
- name: tidegate-config
  configMap:
    name: {{ include "tidegate.configMapName" . }}
- name: tidegate-state
  emptyDir:
    sizeLimit: {{ .Values.stateVolume.sizeLimit }}
{{- range $i, $f := .Values.providerKeys.files }}
- name: tidegate-key-{{ $f.name }}
  secret:
    secretName: {{ include "tidegate.keySecretName" (dict "entry" $f "what" (printf "providerKeys.files[%d]" $i) "root" $) }}
    defaultMode: 0444
    {{- with get $f "items" }}
    items:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}
{{- end }}

{{/* ---- Templates for app charts (sidecar mode) ---- */}}

{{/* The gateway as a sidecar container (list item) for an app chart's pod spec. */}}
{{- define "tidegate.sidecar" -}}
{{- if ne .Values.mode "sidecar" }}
{{- fail "tidegate.sidecar: set the tidegate chart's mode to sidecar (tidegate.mode: sidecar in the app chart's values)" }}
{{- end }}
{{- include "tidegate.validate" . }}
{{- include "tidegate.container" . }}
{{- end }}

{{/* Volumes (list items) the sidecar needs in the app's pod spec. */}}
{{- define "tidegate.sidecar.volumes" -}}
{{- include "tidegate.volumes" . }}
{{- end }}

{{/* Env entries (list items) pointing the app's OpenAI and Anthropic SDKs at the sidecar. */}}
{{- define "tidegate.sidecar.appEnv" -}}
{{- $base := printf "http://%s" (include "tidegate.hostPort" (list (include "tidegate.loopbackHost" .) .Values.server.port)) -}}
- name: OPENAI_BASE_URL
  value: {{ printf "%s/v1" $base | quote }}
- name: ANTHROPIC_BASE_URL
  value: {{ $base | quote }}
{{- end }}
