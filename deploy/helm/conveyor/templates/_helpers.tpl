{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "conveyor.fullname" -}}
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

{{/* Name of one component's resources: conveyor.component (dict "root" $ "component" "worker"). */}}
{{- define "conveyor.componentName" -}}
{{- printf "%s-%s" (include "conveyor.fullname" .root | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "conveyor.secretName" -}}
{{- default (printf "%s-redis" (include "conveyor.fullname" .)) .Values.redis.existingSecret -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------------- */}}

{{- define "conveyor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conveyor.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "conveyor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: conveyor
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Images ----------------------------------------------------------------------------------- */}}

{{- define "conveyor.image" -}}
{{- $image := index .root.Values.image .which -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* Pod plumbing shared by every pod: pull secrets, security, the writable /tmp. ------------------ */}}

{{- define "conveyor.podCommon" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "conveyor.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{- define "conveyor.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Redis ------------------------------------------------------------------------------------ */}}

{{- define "conveyor.redisUrlEnv" -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "conveyor.secretName" . }}
      key: {{ .Values.redis.secretKeys.url }}
{{- end -}}

{{/* Redis TLS files from existing Secrets (redis.tls): env naming them, the volume, its mount. */}}
{{- define "conveyor.redisTlsEnv" -}}
{{- with .Values.redis.tls }}
{{- if .caSecret }}
- name: REDIS_SSL_CA_CERTS
  value: {{ printf "%s/ca.crt" .mountPath | quote }}
{{- end }}
{{- if .clientSecret }}
- name: REDIS_SSL_CERTFILE
  value: {{ printf "%s/tls.crt" .mountPath | quote }}
- name: REDIS_SSL_KEYFILE
  value: {{ printf "%s/tls.key" .mountPath | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Redis Cluster switches (redis.cluster, redis.hashTagPerQueue, docs/cluster.md): one value each, so
     every Django container, web and worker alike, agrees on the client and the key layout. */}}
{{- define "conveyor.redisClusterEnv" -}}
{{- if .Values.redis.cluster }}
- name: REDIS_CLUSTER
  value: "1"
{{- end }}
{{- if .Values.redis.hashTagPerQueue }}
- name: REDIS_HASH_TAG_PER_QUEUE
  value: "1"
{{- end }}
{{- end -}}

{{/* Every volume of a Django pod: /tmp, and the Redis TLS files when redis.tls names Secrets. */}}
{{- define "conveyor.volumes" -}}
{{ include "conveyor.tmpVolume" . }}
{{- with .Values.redis.tls }}
{{- if or .caSecret .clientSecret }}
- name: redis-tls
  projected:
    defaultMode: 0440
    sources:
      {{- if .caSecret }}
      - secret:
          name: {{ .caSecret }}
          items:
            - key: {{ .caKey }}
              path: ca.crt
      {{- end }}
      {{- if .clientSecret }}
      - secret:
          name: {{ .clientSecret }}
          items:
            - key: {{ .certKey }}
              path: tls.crt
            - key: {{ .keyKey }}
              path: tls.key
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "conveyor.volumeMounts" -}}
{{ include "conveyor.tmpMount" . }}
{{- if or .Values.redis.tls.caSecret .Values.redis.tls.clientSecret }}
- name: redis-tls
  mountPath: {{ .Values.redis.tls.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Environment every Django container shares. */}}
{{- define "conveyor.appEnv" -}}
- name: DJANGO_SETTINGS_MODULE
  value: {{ .Values.app.settingsModule | quote }}
- name: CONVEYOR_KEY_PREFIX
  value: {{ .Values.app.keyPrefix | quote }}
{{ include "conveyor.redisUrlEnv" . }}
{{- include "conveyor.redisTlsEnv" . }}
{{- include "conveyor.redisClusterEnv" . }}
{{- with .Values.app.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The worker's settings as CONVEYOR_* variables (docs/worker-interface.md), shared by the worker
     and the queue-metrics exporter. */}}
{{- define "conveyor.workerSettingsEnv" -}}
{{- $w := .Values.worker -}}
- name: CONVEYOR_BACKEND
  value: {{ $w.backend | quote }}
- name: CONVEYOR_QUEUES
  value: {{ join "," $w.queues | quote }}
- name: CONVEYOR_CONCURRENCY
  value: {{ $w.concurrency | quote }}
- name: CONVEYOR_BATCH
  value: {{ ternary "1" "0" $w.batch | quote }}
- name: CONVEYOR_MAX_TASKS
  value: {{ $w.maxTasks | quote }}
- name: CONVEYOR_SHUTDOWN_TIMEOUT
  value: {{ $w.shutdownTimeout | quote }}
- name: CONVEYOR_LEASE
  value: {{ $w.lease | quote }}
- name: CONVEYOR_HEALTH_PORT
  value: {{ $w.healthPort | quote }}
- name: CONVEYOR_HEALTH_HOST
  value: {{ $w.healthHost | quote }}
- name: CONVEYOR_LOG_FORMAT
  value: {{ $w.logFormat | quote }}
- name: CONVEYOR_LOG_LEVEL
  value: {{ $w.logLevel | quote }}
{{- if $w.allowedTaskModules }}
- name: CONVEYOR_ALLOWED_TASK_MODULES
  value: {{ join "," $w.allowedTaskModules | quote }}
{{- end }}
- name: CONVEYOR_MAX_DELIVERIES
  value: {{ $w.maxDeliveries | quote }}
{{- end -}}

{{/* Probes on the worker's health port. */}}
{{- define "conveyor.workerProbes" -}}
livenessProbe:
  httpGet:
    path: /livez
    port: health
  {{- toYaml .Values.worker.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: health
  {{- toYaml .Values.worker.readinessProbe | nindent 2 }}
{{- end -}}

{{/* Checks the schema cannot express; a violation stops rendering with a message. ------------------- */}}

{{- define "conveyor.validate" -}}
{{- $w := .Values.worker -}}
{{- $a := .Values.autoscaling -}}
{{- if le (int $w.terminationGracePeriodSeconds) (int $w.shutdownTimeout) -}}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must be greater than worker.shutdownTimeout (%d): Kubernetes kills the pod when the grace period ends, so the worker needs time after its shutdown timeout to hand unfinished tasks back to their queues." (int $w.terminationGracePeriodSeconds) (int $w.shutdownTimeout)) -}}
{{- end -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas (%d) must not exceed autoscaling.maxReplicas (%d)." (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- if and (eq $a.mode "hpa") (lt (int $a.minReplicas) 1) -}}
{{- fail "autoscaling.minReplicas must be at least 1 with autoscaling.mode=hpa (an HPA cannot scale to zero without a feature gate); use autoscaling.mode=keda to scale to zero." -}}
{{- end -}}
{{- if ne $a.mode "none" -}}
{{- range $w.queues -}}
{{- if or (eq . "*") (hasPrefix "-" .) -}}
{{- fail (printf "worker.queues entry %q: autoscaling.mode=%s counts each queue's work, so worker.queues must list plain queue names (no '*' or '-name')." . $a.mode) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $w.extraEnv -}}
{{- if eq .name "CONVEYOR_WORKER_ID" -}}
{{- fail "worker.extraEnv must not set CONVEYOR_WORKER_ID: every replica would share one id. Each pod takes the worker's default (its pod name + a random suffix)." -}}
{{- end -}}
{{- end -}}
{{- range $w.extraArgs -}}
{{- if or (eq . "--worker-id") (hasPrefix "--worker-id=" .) -}}
{{- fail "worker.extraArgs must not pass --worker-id: every replica would share one id. Each pod takes the worker's default (its pod name + a random suffix)." -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.redis.existingSecret) (not (has (urlParse .Values.redis.url).scheme (list "redis" "rediss"))) -}}
{{- fail (printf "redis.url must start with redis:// or rediss:// (got scheme %q)." (urlParse .Values.redis.url).scheme) -}}
{{- end -}}
{{- if and .Values.redis.cluster (not .Values.redis.existingSecret) (not (has (urlParse .Values.redis.url).path (list "" "/" "/0"))) -}}
{{- fail (printf "redis.url names database %q, but a Redis Cluster has only database 0 (redis.cluster is true): end the URL with /0 or no path." (trimPrefix "/" (urlParse .Values.redis.url).path)) -}}
{{- end -}}
{{- end -}}

{{/* Autoscaling ------------------------------------------------------------------------------ */}}

{{/* The exporter runs whenever something scales on it, or when asked for. */}}
{{- define "conveyor.queueMetricsEnabled" -}}
{{- if or .Values.queueMetrics.enabled (ne .Values.autoscaling.mode "none") }}true{{ end -}}
{{- end -}}

{{/* Work one worker should hold: autoscaling.tasksPerWorker, or worker.concurrency (one task per slot). */}}
{{- define "conveyor.tasksPerWorker" -}}
{{- $set := int .Values.autoscaling.tasksPerWorker -}}
{{- ternary $set (int .Values.worker.concurrency) (gt $set 0) -}}
{{- end -}}

{{/* The exporter's JSON view of the queues' work, as KEDA (in another namespace) reaches it. */}}
{{- define "conveyor.workURL" -}}
{{- printf "http://%s.%s.svc:%v/work" (include "conveyor.componentName" (dict "root" . "component" "queue-metrics")) .Release.Namespace .Values.queueMetrics.service.port -}}
{{- end -}}
