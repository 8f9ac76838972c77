{{/*
Names, labels and the reusable sse-sidecar container.
*/}}

{{/* Chart name, overridable by nameOverride; 63 characters at most (DNS label). */}}
{{- define "sse-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<name>, or the release name alone when it
already contains the name; 63 characters at most.
*/}}
{{- define "sse-sidecar.fullname" -}}
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

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "sse-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "sse-sidecar.labels" -}}
helm.sh/chart: {{ include "sse-sidecar.chart" . }}
{{ include "sse-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the pods: never change them in an upgrade (selectors are immutable). */}}
{{- define "sse-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sse-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "sse-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sse-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference; the tag defaults to the chart's appVersion. */}}
{{- define "sse-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Ports, from the config the process reads (so they cannot disagree). */}}
{{- define "sse-sidecar.httpPort" -}}
{{- .Values.config.listen.port | default 8080 | int }}
{{- end }}

{{- define "sse-sidecar.adminPort" -}}
{{- .Values.config.admin.port | default 9090 | int }}
{{- end }}

{{/*
Does the chart run pods itself? standalone always; sidecar mode only when
sidecar.app is given (otherwise the user's own pods run the container).
*/}}
{{- define "sse-sidecar.rendersPods" -}}
{{- if or (eq .Values.mode "standalone") .Values.sidecar.app }}true{{ end }}
{{- end }}

{{/* Pod labels the Service selects: the chart's own pods, or sidecar.podSelector. */}}
{{- define "sse-sidecar.serviceSelector" -}}
{{- if include "sse-sidecar.rendersPods" . }}
{{- include "sse-sidecar.selectorLabels" . }}
{{- else }}
{{- toYaml .Values.sidecar.podSelector }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the value given, or drain_timeout + 10 when it is
null. drain_timeout may be a number of seconds or carry ms, s, m or h.
*/}}
{{- define "sse-sidecar.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- $drain := toString (.Values.config.drain_timeout | default 10) | trim }}
{{- $pattern := "^([0-9]+(\\.[0-9]+)?)(ms|s|m|h)?$" }}
{{- if not (regexMatch $pattern $drain) }}
{{- fail (printf "config.drain_timeout: expected a duration like 10s, got %q" $drain) }}
{{- end }}
{{- $number := regexReplaceAll $pattern $drain "${1}" | float64 }}
{{- $unit := regexReplaceAll $pattern $drain "${3}" }}
{{- $scale := get (dict "ms" 0.001 "s" 1.0 "" 1.0 "m" 60.0 "h" 3600.0) $unit }}
{{- addf (mulf $number $scale) 10 | ceil | int }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/* Where the image and the chart put the config file. */}}
{{- define "sse-sidecar.configPath" -}}
/etc/sse-sidecar/sidecar.yaml
{{- end }}

{{/*
The sse-sidecar container spec, one list item's body: use it as
  containers:
    - {{ include "sse-sidecar.container" . | nindent 6 | trim }}
together with the volumes of "sse-sidecar.volumes".
*/}}
{{- define "sse-sidecar.container" -}}
name: sse-sidecar
image: {{ include "sse-sidecar.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args:
  - --config
  - {{ include "sse-sidecar.configPath" . }}
{{- if or .Values.adminToken.existingSecret .Values.redisUrl.existingSecret .Values.websocketTokens .Values.extraEnv }}
env:
  {{- with .Values.adminToken.existingSecret }}
  - name: SSE_SIDECAR_ADMIN__TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: {{ $.Values.adminToken.key }}
  {{- end }}
  {{- with .Values.redisUrl.existingSecret }}
  {{- /* The whole URL, password included, never reaches the ConfigMap. */}}
  - name: SSE_SIDECAR_BACKEND__URL
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: {{ $.Values.redisUrl.key }}
  {{- end }}
  {{- range .Values.websocketTokens }}
  {{- if not .mountPath }}
  {{- /* The config loader names a route by its name, upper-cased in the variable. */}}
  - name: SSE_SIDECAR_ROUTES__{{ .route | upper }}__WEBSOCKET__TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ .existingSecret }}
        key: {{ .key | default "token" }}
  {{- end }}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
ports:
  - name: http
    containerPort: {{ include "sse-sidecar.httpPort" . }}
    protocol: TCP
  - name: admin
    containerPort: {{ include "sse-sidecar.adminPort" . }}
    protocol: TCP
{{- with .Values.livenessProbe }}
{{- if .enabled }}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  initialDelaySeconds: {{ .initialDelaySeconds }}
  periodSeconds: {{ .periodSeconds }}
  timeoutSeconds: {{ .timeoutSeconds }}
  failureThreshold: {{ .failureThreshold }}
{{- end }}
{{- end }}
{{- with .Values.readinessProbe }}
{{- if .enabled }}
readinessProbe:
  {{- if $.Values.adminToken.existingSecret }}
  {{- /* /readyz needs the bearer token: send it from the container's own
         environment, so it is not written into the pod spec. */}}
  exec:
    command:
      - python
      - -I
      - -c
      - >-
        import os, urllib.request as r;
        r.urlopen(r.Request('http://127.0.0.1:{{ include "sse-sidecar.adminPort" $ }}/readyz',
        headers={'Authorization': 'Bearer ' + os.environ['SSE_SIDECAR_ADMIN__TOKEN']}), timeout=2)
  {{- else }}
  httpGet:
    path: /readyz
    port: admin
  {{- end }}
  initialDelaySeconds: {{ .initialDelaySeconds }}
  periodSeconds: {{ .periodSeconds }}
  timeoutSeconds: {{ .timeoutSeconds }}
  failureThreshold: {{ .failureThreshold }}
  successThreshold: {{ .successThreshold }}
{{- end }}
{{- end }}
{{- with .Values.lifecycle }}
lifecycle:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: sse-sidecar-config
    mountPath: /etc/sse-sidecar
    readOnly: true
  - name: sse-sidecar-tmp
    mountPath: /tmp
  {{- range .Values.websocketTokens }}
  {{- if .mountPath }}
  - name: ws-token-{{ .route | lower }}
    mountPath: {{ .mountPath }}
    readOnly: true
  {{- end }}
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
The volumes the container mounts, as list items: the config (the ConfigMap,
mounted as a directory so no subPath pins an old version) and a writable /tmp
under the read-only root filesystem.
*/}}
{{- define "sse-sidecar.volumes" -}}
- name: sse-sidecar-config
  configMap:
    name: {{ include "sse-sidecar.fullname" . }}
- name: sse-sidecar-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- range .Values.websocketTokens }}
{{- if .mountPath }}
{{- /* The route's websocket.token_file is <mountPath>/<key>. */}}
- name: ws-token-{{ .route | lower }}
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .key | default "token" }}
        path: {{ .key | default "token" }}
{{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
