{{/* Names and labels. */}}
{{- define "fugato.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fugato.fullname" -}}
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

{{- define "fugato.internalName" -}}
{{- printf "%s-internal" (include "fugato.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "fugato.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fugato.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fugato.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fugato.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "fugato.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fugato.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fugato.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The ConfigMap's config.json. Secrets are refused: they belong in Secrets, passed as env. */}}
{{- define "fugato.configJson" -}}
{{- $c := .Values.config | default dict }}
{{- range $path := list "client.token.hmac_secret_key" "client.subscription_token.hmac_secret_key" "http_api.key" "engine.redis.password" "broker.redis.password" "presence_manager.redis.password" }}
{{- $v := $c }}
{{- range $key := splitList "." $path }}
{{- $v = and (kindIs "map" $v) (get $v $key) }}
{{- end }}
{{- if $v }}
{{- fail (printf "config.%s must not be in values (it would land in a ConfigMap): put it in a Secret and pass it with existingSecret or envSecret as FUGATO_%s" $path (upper (replace "." "_" $path))) }}
{{- end }}
{{- end }}
{{- toPrettyJson $c }}
{{- end }}

{{/* Seconds from SIGTERM until supervisord kills a worker that has not stopped: shutdown.timeout + 5. */}}
{{- define "fugato.drainSeconds" -}}
{{- add (int .Values.drain.shutdownTimeoutSeconds) 5 }}
{{- end }}

{{- define "fugato.terminationGracePeriodSeconds" -}}
{{- $needed := add (int .Values.drain.preStopSleepSeconds) (int (include "fugato.drainSeconds" .)) }}
{{- $grace := .Values.terminationGracePeriodSeconds | default (add $needed 5) | int }}
{{- if le $grace $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed drain.preStopSleepSeconds + drain.shutdownTimeoutSeconds + 5 (%d)" $grace $needed) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* "memory" when the engine cannot span processes (its broker or its presence manager lives in memory), else
the broker's type: the engine's, or Centrifugo v6's separate broker / presence_manager when enabled. */}}
{{- define "fugato.engine" -}}
{{- $c := .Values.config | default dict }}
{{- $engine := dig "engine" "type" "memory" $c }}
{{- $broker := ternary (dig "broker" "type" "memory" $c) $engine (dig "broker" "enabled" false $c | eq true) }}
{{- $presence := ternary (dig "presence_manager" "type" "memory" $c) $engine (dig "presence_manager" "enabled" false $c | eq true) }}
{{- if or (eq $broker "memory") (eq $presence "memory") }}memory{{ else }}{{ $broker }}{{ end }}
{{- end }}

{{/* Several workers share nothing in memory: they need the Redis engine, as `fugato serve` itself insists. */}}
{{- define "fugato.checkWorkers" -}}
{{- $workers := toString .Values.workers }}
{{- if and (ne $workers "auto") (gt (atoi $workers) 1) (eq (include "fugato.engine" .) "memory") }}
{{- fail (printf "workers: %s needs config.engine.type \"redis\" (or a NATS/Redis broker with a Redis presence_manager): the memory engine cannot span processes (use workers: auto or 1)" $workers) }}
{{- end }}
{{- end }}
