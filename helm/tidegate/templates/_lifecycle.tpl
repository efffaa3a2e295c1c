{{/* Shutdown timing (delay, grace, the pod's grace period) and Kubernetes version checks. */}}

{{/*
A duration value in whole seconds (rounded up): (list "server.shutdownGrace" "30s"). Same
duration syntax as tidegate: one number and a unit.
*/}}
{{- define "tidegate.durationSeconds" -}}
{{- $name := index . 0 }}
{{- $d := toString (index . 1) }}
{{- if not (regexMatch "^[0-9]+(ms|s|m|h)$" $d) }}
{{- fail (printf "%s %q: expected one number and a unit (ms, s, m or h), e.g. 30s" $name $d) }}
{{- end }}
{{- $num := regexFind "^[0-9]+" $d }}
{{- $n := regexReplaceAll "^0+([0-9])" $num "${1}" | int64 }}
{{- $unit := trimPrefix $num $d }}
{{- if eq $unit "ms" }}
{{- div (add $n 999) 1000 }}
{{- else if eq $unit "s" }}
{{- $n }}
{{- else if eq $unit "m" }}
{{- mul $n 60 }}
{{- else }}
{{- mul $n 3600 }}
{{- end }}
{{- end }}

{{/* server.shutdownGrace in whole seconds (rounded up). */}}
{{- define "tidegate.shutdownGraceSeconds" -}}
{{- include "tidegate.durationSeconds" (list "server.shutdownGrace" .Values.server.shutdownGrace) }}
{{- end }}

{{/*
server.shutdown_delay as written into the config: server.shutdownDelay, or when empty 5s in
deployment mode (endpoint removal reaches kube-proxy and client caches after SIGTERM) and 0s in
sidecar mode (loopback traffic; a native sidecar is stopped after the app).
*/}}
{{- define "tidegate.shutdownDelay" -}}
{{- $d := toString (.Values.server.shutdownDelay | default "") }}
{{- if $d }}
{{- $d }}
{{- else if eq .Values.mode "deployment" }}
{{- print "5s" }}
{{- else }}
{{- print "0s" }}
{{- end }}
{{- end }}

{{/* server.shutdown_delay in whole seconds (rounded up). */}}
{{- define "tidegate.shutdownDelaySeconds" -}}
{{- include "tidegate.durationSeconds" (list "server.shutdownDelay" (include "tidegate.shutdownDelay" .)) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: derived (preStop sleep + shutdownDelay + shutdownGrace + margin),
or the value set, which must leave the gateway its whole shutdown: the kubelet's clock starts
with the preStop hook, tidegate keeps accepting for shutdown_delay after SIGTERM, and the drain
(shutdown_grace) starts only then.
*/}}
{{- define "tidegate.terminationGracePeriodSeconds" -}}
{{- $grace := include "tidegate.shutdownGraceSeconds" . | int64 }}
{{- $delay := include "tidegate.shutdownDelaySeconds" . | int64 }}
{{- $preStop := int64 .Values.lifecycle.preStopSleepSeconds }}
{{- $drain := add $grace $delay $preStop }}
{{- $set := int64 .Values.terminationGracePeriodSeconds }}
{{- if gt $set 0 }}
{{- if le $set $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than server.shutdownGrace (%ds) + server.shutdownDelay (%ds) + lifecycle.preStopSleepSeconds (%ds) = %ds, or the kubelet kills streams that are still draining" $set $grace $delay $preStop $drain) }}
{{- end }}
{{- $set }}
{{- else }}
{{- add $drain (int64 .Values.terminationGraceMarginSeconds) }}
{{- end }}
{{- end }}

{{/*
The cluster's Kubernetes version (.Capabilities), or "" in a context built by hand without it.
*/}}
{{- define "tidegate.kubeVersion" -}}
{{- with get . "Capabilities" }}{{ .KubeVersion.Version }}{{ end }}
{{- end }}

{{/*
Fails at render when the values ask for a feature the target cluster lacks, instead of letting
the apiserver reject the pod with an unrelated-looking error.
*/}}
{{- define "tidegate.checkKubeVersion" -}}
{{- $kv := include "tidegate.kubeVersion" . }}
{{- if $kv }}
{{- $v := .Values }}
{{- if and (eq $v.mode "sidecar") $v.sidecar.native (semverCompare "<1.29.0-0" $kv) }}
{{- fail (printf "sidecar.native: a native sidecar (initContainers[].restartPolicy: Always) needs Kubernetes 1.29+, and this cluster is %s: set sidecar.native=false for a classic sidecar" $kv) }}
{{- end }}
{{- if and (gt (int $v.lifecycle.preStopSleepSeconds) 0) (semverCompare "<1.30.0-0" $kv) }}
{{- fail (printf "lifecycle.preStopSleepSeconds: a preStop sleep hook needs Kubernetes 1.30+, and this cluster is %s: set it to 0 and use server.shutdownDelay (tidegate keeps accepting after SIGTERM)" $kv) }}
{{- end }}
{{- end }}
{{- end }}
