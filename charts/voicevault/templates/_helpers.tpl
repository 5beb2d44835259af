{{/* Release-scoped name: the release name when it already says "voicevault". */}}
{{- define "voicevault.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "voicevault.labels" -}}
app.kubernetes.io/name: voicevault
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels of the operator's own objects (Deployment, Service, ServiceMonitor). */}}
{{- define "voicevault.operatorLabels" -}}
{{ include "voicevault.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Immutable: the Deployment selector and the Service selector. */}}
{{- define "voicevault.selectorLabels" -}}
app.kubernetes.io/name: voicevault
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* One image for the operator and the uploader pods; the tag defaults to appVersion. */}}
{{- define "voicevault.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "voicevault.uploaderNamespace" -}}
{{- default .Release.Namespace .Values.uploader.namespace -}}
{{- end -}}

{{- define "voicevault.operatorServiceAccount" -}}
{{- printf "%s-operator" (include "voicevault.fullname" .) -}}
{{- end -}}

{{- define "voicevault.uploaderServiceAccount" -}}
{{- printf "%s-uploader" (include "voicevault.fullname" .) -}}
{{- end -}}

{{/* Pod Security "restricted": what every container of the chart's own pods sets. */}}
{{- define "voicevault.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "voicevault.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The Secret holding the webhook's serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "voicevault.webhookCertSecret" -}}
{{- printf "%s-webhook-cert" (include "voicevault.fullname" .) -}}
{{- end -}}
