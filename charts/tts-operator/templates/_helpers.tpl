{{/*
Expand the name of the chart.
*/}}
{{- define "tts-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "tts-operator.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "tts-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "tts-operator.labels" -}}
helm.sh/chart: {{ include "tts-operator.chart" . }}
{{ include "tts-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tts-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels. The component label keeps the operator's pods apart from the
inference pods the operator makes, which carry app.kubernetes.io/name=tts-operator too.
*/}}
{{- define "tts-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tts-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "tts-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tts-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {registry, repository, tag}; an empty tag means the chart's appVersion.
*/}}
{{- define "tts-operator.image" -}}
{{- $image := .image -}}
{{- $_ := required (printf "set %s.repository to the %s you built and pushed (docs/install.md, \"What you need first\"): no public registry holds one" .path .label) $image.repository -}}
{{- $tag := $image.tag | default .root.Chart.AppVersion | toString -}}
{{- if $image.registry -}}
{{- printf "%s/%s:%s" $image.registry $image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $image.repository $tag -}}
{{- end -}}
{{- end }}

{{/*
The namespace of the dashboards ConfigMap (Grafana's sidecar may watch only one).
*/}}
{{- define "tts-operator.dashboardsNamespace" -}}
{{- default .Release.Namespace .Values.monitoring.dashboards.namespace }}
{{- end }}

{{/*
The operator's settings as TTS_OPERATOR_* variables (tts_operator/config.py
reads them; flags would win, and the chart passes none).
*/}}
{{- define "tts-operator.settings" -}}
{{- if .Values.watchNamespaces }}
TTS_OPERATOR_NAMESPACES: {{ join "," .Values.watchNamespaces | quote }}
{{- else }}
TTS_OPERATOR_ALL_NAMESPACES: "true"
{{- end }}
TTS_OPERATOR_METRICS_PORT: {{ .Values.operator.metricsPort | quote }}
TTS_OPERATOR_HEALTH_PORT: {{ .Values.operator.healthPort | quote }}
TTS_OPERATOR_INFERENCE_IMAGE: {{ include "tts-operator.image" (dict "image" .Values.inference.image "root" . "path" "inference.image" "label" "inference image") | quote }}
TTS_OPERATOR_IMAGE_PULL_POLICY: {{ .Values.inference.image.pullPolicy | quote }}
TTS_OPERATOR_LOG_FORMAT: {{ .Values.operator.logFormat | quote }}
TTS_OPERATOR_RECONCILE_INTERVAL: {{ .Values.operator.reconcileInterval | quote }}
{{- with .Values.operator.endpointUrlTemplate }}
TTS_OPERATOR_ENDPOINT_URL_TEMPLATE: {{ . | quote }}
{{- end }}
{{- with .Values.operator.peering }}
TTS_OPERATOR_PEERING: {{ . | quote }}
{{- end }}
TTS_OPERATOR_AUTOSCALER: {{ .Values.autoscaling.engine | quote }}
TTS_OPERATOR_PROMETHEUS_URL: {{ .Values.autoscaling.prometheusUrl | quote }}
{{- with .Values.inference.voiceAliases }}
TTS_OPERATOR_VOICE_ALIASES: {{ include "tts-operator.voiceAliases" . | quote }}
{{- end }}
{{- end }}

{{/*
The operator's RBAC rules, from files/rbac-rules.yaml (generated from
tts_operator.kube.RBAC_RULES; a test keeps them equal). With cluster=false the
cluster-scoped resources are left out: a Role cannot grant them, and the
operator works without them (Kopf then skips watching namespaces and CRDs).
*/}}
{{- define "tts-operator.rbacRules" -}}
{{- $clusterScoped := list "namespaces" "customresourcedefinitions" "clusterkopfpeerings" -}}
{{- $rules := .root.Files.Get "files/rbac-rules.yaml" | fromYamlArray -}}
{{- $out := list -}}
{{- range $rules -}}
{{- $resources := list -}}
{{- range .resources -}}
{{- if or $.cluster (not (has . $clusterScoped)) -}}
{{- $resources = append $resources . -}}
{{- end -}}
{{- end -}}
{{- if $resources -}}
{{- $out = append $out (dict "apiGroups" .apiGroups "resources" $resources "verbs" .verbs) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end }}

{{/*
Alert helpers: the severity label and the runbook_url annotation of one alert.
Usage: include "tts-operator.alertMeta" (dict "root" $ "name" "TTSLatencyHigh")
*/}}
{{- define "tts-operator.alertLabels" -}}
severity: {{ (get .root.Values.monitoring.prometheusRule.alerts .name).severity }}
{{- with .root.Values.monitoring.prometheusRule.additionalAlertLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tts-operator.runbookUrl" -}}
{{- printf "%s#%s" .root.Values.monitoring.prometheusRule.runbookUrl (lower .name) }}
{{- end }}

{{/*
Labels of `helm test`'s pod (the NetworkPolicy lets it in).
*/}}
{{- define "tts-operator.testSelectorLabels" -}}
tts.f5tts.dev/helm-test: {{ include "tts-operator.fullname" . | quote }}
{{- end }}

{{/*
Voice aliases as the operator reads them: alias=voice pairs, comma-separated, sorted.
*/}}
{{- define "tts-operator.voiceAliases" -}}
{{- $pairs := list -}}
{{- range $alias := keys . | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%s" $alias (index $ $alias)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end }}
