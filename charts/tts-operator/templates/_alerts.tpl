{{/*
The alerting rules, one per enabled alert (values monitoring.prometheusRule.alerts).
Rendered by prometheusrule.yaml; empty when every alert is off.
*/}}
{{- define "tts-operator.alertRules" -}}
{{- $alerts := .Values.monitoring.prometheusRule.alerts }}
{{- $speech := `route="/v1/audio/speech"` }}
{{- with $alerts.TTSOperatorDown }}
{{- if and .enabled $.Values.monitoring.serviceMonitor.enabled }}
- alert: TTSOperatorDown
  expr: absent(up{job="{{ include "tts-operator.fullname" $ }}", namespace="{{ $.Release.Namespace }}"} == 1)
  for: {{ .for }}
  labels:
    {{- include "tts-operator.alertLabels" (dict "root" $ "name" "TTSOperatorDown") | nindent 4 }}
    namespace: {{ $.Release.Namespace }}
  annotations:
    summary: The tts-operator is not being scraped, or is down.
    description: >-
      No up target of the tts-operator in {{ $.Release.Namespace }} for {{ .for }}:
      TTSEndpoints and TTSJobs are not reconciled (running servers keep serving).
    runbook_url: {{ include "tts-operator.runbookUrl" (dict "root" $ "name" "TTSOperatorDown") }}
{{- end }}
{{- end }}
{{- with $alerts.TTSOperatorReconcileErrors }}
{{- if .enabled }}
- alert: TTSOperatorReconcileErrors
  expr: |-
    sum(rate(tts_operator_reconciles_total{result="error"}[10m]))
    / sum(rate(tts_operator_reconciles_total[10m])) > {{ .threshold }}
  for: {{ .for }}
  labels:
    {{- include "tts-operator.alertLabels" (dict "root" $ "name" "TTSOperatorReconcileErrors") | nindent 4 }}
  annotations:
    summary: Most reconcile passes of the tts-operator fail.
    description: >-
      {{`{{ $value | humanizePercentage }}`}} of the operator's reconcile passes raised
      over the last 10 minutes; its log names the resource and the error.
    runbook_url: {{ include "tts-operator.runbookUrl" (dict "root" $ "name" "TTSOperatorReconcileErrors") }}
{{- end }}
{{- end }}
{{- with $alerts.TTSCacheSyncFailing }}
{{- if .enabled }}
- alert: TTSCacheSyncFailing
  expr: max(tts_operator_resources{kind="TTSEndpoint", phase="Failed"}) > 0
  for: {{ .for }}
  labels:
    {{- include "tts-operator.alertLabels" (dict "root" $ "name" "TTSCacheSyncFailing") | nindent 4 }}
  annotations:
    summary: A TTSEndpoint's cache sync failed.
    description: >-
      {{`{{ $value }}`}} TTSEndpoint(s) are Failed: the cache Job that syncs the model
      (and installs flash_attn) failed, or its credentials Secret is missing. No server
      starts until it succeeds. `kubectl get ttsendpoints -A` shows which.
    runbook_url: {{ include "tts-operator.runbookUrl" (dict "root" $ "name" "TTSCacheSyncFailing") }}
{{- end }}
{{- end }}
{{- with $alerts.TTSEndpointNotReady }}
{{- if .enabled }}
- alert: TTSEndpointNotReady
  expr: sum(tts_operator_resources{kind="TTSEndpoint", phase=~"Pending|Syncing|Degraded"}) > 0
  for: {{ .for }}
  labels:
    {{- include "tts-operator.alertLabels" (dict "root" $ "name" "TTSEndpointNotReady") | nindent 4 }}
  annotations:
    summary: TTSEndpoints have not been Ready for {{ .for }}.
    description: >-
      {{`{{ $value }}`}} TTSEndpoint(s) stayed Pending, Syncing or Degraded for {{ .for }}.
      `kubectl get ttsendpoints -A` shows which, and their conditions say why.
    runbook_url: {{ include "tts-operator.runbookUrl" (dict "root" $ "name" "TTSEndpointNotReady") }}
{{- end }}
{{- end }}
{{- with $alerts.TTSServerNotReady }}
{{- if .enabled }}
- alert: TTSServerNotReady
  expr: max by (namespace, pod) (tts_ready) == 0
  for: {{ .for }}
  labels:
    {{- include "tts-operator.alertLabels" (dict "root" $ "name" "TTSServerNotReady") | nindent 4 }}
  annotations:
    summary: An inference server is up but not ready.
    description: >-
      {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} has answered /metrics without being
      ready for {{ .for }}: the model is still loading, the warm-up failed, or it is draining.
    runbook_url: {{ include "tts-operator.runbookUrl" (dict "root" $ "name" "TTSServerNotReady") }}
{{- end }}
{{- end }}
{{- with $alerts.TTSQueueSaturated }}
{{- if .enabled }}
- alert: TTSQueueSaturated
  expr: sum by (namespace, pod) (rate(tts_queue_rejected_total[5m])) > {{ .threshold }}
  for: {{ .for }}
  labels:
    {{- include "tts-operator.alertLabels" (dict "root" $ "name" "TTSQueueSaturated") | nindent 4 }}
  annotations:
    summary: An inference server's queue is full.
    description: >-
      {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} refuses {{`{{ $value | humanize }}`}}
      requests per second with 429 because its queue is full.
    runbook_url: {{ include "tts-operator.runbookUrl" (dict "root" $ "name" "TTSQueueSaturated") }}
{{- end }}
{{- end }}
{{- with $alerts.TTSLatencyHigh }}
{{- if .enabled }}
- alert: TTSLatencyHigh
  expr: histogram_quantile(0.95, sum by (namespace, le) (rate(tts_request_duration_seconds_bucket{ {{- $speech -}} }[5m]))) > {{ .threshold }}
  for: {{ .for }}
  labels:
    {{- include "tts-operator.alertLabels" (dict "root" $ "name" "TTSLatencyHigh") | nindent 4 }}
  annotations:
    summary: Speech requests are slow.
    description: >-
      p95 speech latency in {{`{{ $labels.namespace }}`}} is {{`{{ $value | humanizeDuration }}`}},
      over the {{ .threshold }}s threshold.
    runbook_url: {{ include "tts-operator.runbookUrl" (dict "root" $ "name" "TTSLatencyHigh") }}
{{- end }}
{{- end }}
{{- with $alerts.TTSJobFailureRatioHigh }}
{{- if .enabled }}
- alert: TTSJobFailureRatioHigh
  expr: |-
    (
      sum(tts_operator_resources{kind="TTSJob", phase="Failed"})
      / sum(tts_operator_resources{kind="TTSJob", phase=~"Succeeded|Failed"})
      > {{ .threshold }}
    )
    and sum(tts_operator_resources{kind="TTSJob", phase=~"Succeeded|Failed"}) >= {{ .minJobs }}
  for: {{ .for }}
  labels:
    {{- include "tts-operator.alertLabels" (dict "root" $ "name" "TTSJobFailureRatioHigh") | nindent 4 }}
  annotations:
    summary: Many TTSJobs fail.
    description: >-
      {{`{{ $value | humanizePercentage }}`}} of the finished TTSJobs failed.
      `kubectl get ttsjobs -A` lists them; a failed one's status.message says why.
    runbook_url: {{ include "tts-operator.runbookUrl" (dict "root" $ "name" "TTSJobFailureRatioHigh") }}
{{- end }}
{{- end }}
{{- end }}
