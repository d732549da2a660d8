{{/*
Names, labels, the store and the checks every template shares.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: fullnameOverride, or <release>-<name> unless the release already names it. */}}
{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* What selects the gateway's pods: the Deployment, the Service, the PDB, the NetworkPolicy. */}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.configMapName" -}}
{{- printf "%s-config" (include "portcullis.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The config's listener ports, which are also the container ports. */}}
{{- define "portcullis.mcpPort" -}}
{{- int .Values.config.listen.port -}}
{{- end -}}
{{- define "portcullis.adminPort" -}}
{{- int .Values.config.admin.port -}}
{{- end -}}

{{/* The Redis of charts/redis: its Service and Secret are <release>-redis. */}}
{{- define "portcullis.redisFullname" -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Its password: the Secret you name, or the one it makes (key `password`). */}}
{{- define "portcullis.redisPasswordSecret" -}}
{{- default (include "portcullis.redisFullname" .) .Values.redis.auth.existingSecret.name -}}
{{- end -}}

{{/* "redis" when a Redis is given (the dependency or an external one), else "memory". */}}
{{- define "portcullis.storeKind" -}}
{{- if or .Values.redis.enabled .Values.redis.external.url .Values.redis.external.existingSecret.name -}}
redis
{{- else -}}
memory
{{- end -}}
{{- end -}}

{{/*
store.url: the dependency's Service (the password from its Secret, in the
environment), the external Secret's URL (in the environment), or the
external URL as given.
*/}}
{{- define "portcullis.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://:${PORTCULLIS_REDIS_PASSWORD}@%s:%d" (include "portcullis.redisFullname" .) (int .Values.redis.port) -}}
{{- else if .Values.redis.external.existingSecret.name -}}
${PORTCULLIS_REDIS_URL}
{{- else -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* Pods the Deployment may run: replicaCount, or the autoscaler's maximum. */}}
{{- define "portcullis.severalReplicas" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}
true
{{- end -}}
{{- end -}}

{{/*
What the schema cannot say in full, checked again where it matters:
replicas share Redis; forwarding needs Redis and its secret; the autoscaler's bounds; a scraper can
read /metrics; the grace period covers the preStop sleep, leaving rotation
and the drain.
*/}}
{{- define "portcullis.validate" -}}
{{- $memory := eq (include "portcullis.storeKind" .) "memory" -}}
{{- if and $memory (include "portcullis.severalReplicas" .) -}}
{{- fail "more than one replica (replicaCount > 1 or autoscaling.enabled) needs a shared Redis: set redis.enabled or redis.external" -}}
{{- end -}}
{{- if .Values.cluster.enabled -}}
{{- if $memory -}}
{{- fail "cluster.enabled needs a shared Redis: set redis.enabled or redis.external" -}}
{{- end -}}
{{- if not .Values.cluster.existingSecret.name -}}
{{- fail "cluster.enabled needs cluster.existingSecret.name, a Secret holding the shared secret" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- $monitored := or .Values.monitoring.serviceMonitor.enabled .Values.monitoring.podMonitor.enabled -}}
{{- $public := dig "admin" "publicMetrics" false (.Values.config | default dict) -}}
{{- if and $monitored (not $public) (not .Values.adminToken.existingSecret.name) -}}
{{- fail "a ServiceMonitor or PodMonitor needs config.admin.publicMetrics or adminToken.existingSecret: /metrics is closed otherwise" -}}
{{- end -}}
{{- $shutdown := get .Values.config "shutdown" | default dict -}}
{{- /* The gateway's own defaults when config.shutdown leaves them out. */ -}}
{{- $leave := 0 -}}
{{- if hasKey $shutdown "leaveRotationMs" -}}
{{- $leave = int (get $shutdown "leaveRotationMs") -}}
{{- end -}}
{{- $drain := 10000 -}}
{{- if hasKey $shutdown "drainTimeoutMs" -}}
{{- $drain = int (get $shutdown "drainTimeoutMs") -}}
{{- end -}}
{{- $need := add (mul (int .Values.preStopSleepSeconds) 1000) $leave $drain -}}
{{- if le (mul (int .Values.terminationGracePeriodSeconds) 1000) $need -}}
{{- fail (printf "terminationGracePeriodSeconds (%d s) must exceed preStopSleepSeconds + config.shutdown.leaveRotationMs + config.shutdown.drainTimeoutMs (%d ms)" (int .Values.terminationGracePeriodSeconds) $need) -}}
{{- end -}}
{{- end -}}
