{{/* Names and labels shared by every template. */}}

{{- define "kenv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; the release name alone when it already contains the chart name. */}}
{{- define "kenv.fullname" -}}
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

{{- define "kenv.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kenv.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kenv.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The pods of one role's Deployment (templates/deployment.yaml): `controller` or `admission`. */}}
{{- define "kenv.roleSelectorLabels" -}}
{{ include "kenv.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "kenv.labels" -}}
helm.sh/chart: {{ include "kenv.chart" . }}
{{ include "kenv.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: kenv
{{- end }}

{{- define "kenv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kenv.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The admission pods' ServiceAccount: one of their own with read-only RBAC when the chart creates accounts
(they only list and watch); otherwise the one given, shared with the controllers. */}}
{{- define "kenv.admissionServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- printf "%s-admission" (include "kenv.serviceAccountName" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- include "kenv.serviceAccountName" . }}
{{- end }}
{{- end }}

{{/* Where build Jobs, their context ConfigMaps and docker-config Secrets live (KENV_BUILD_NAMESPACE). */}}
{{- define "kenv.buildNamespace" -}}
{{- default .Release.Namespace .Values.buildNamespace }}
{{- end }}

{{/* The webhook Service; the serving certificate is issued for its DNS names. */}}
{{- define "kenv.serviceName" -}}
{{- include "kenv.fullname" . }}
{{- end }}

{{- define "kenv.certSecretName" -}}
{{- printf "%s-webhook-tls" (include "kenv.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kenv.certificateName" -}}
{{- printf "%s-webhook" (include "kenv.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kenv.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The namespaces the webhook applies to: webhook.namespaceSelector when set; else every namespace but the
release's (and with watchNamespaces, only those).
*/}}
{{- define "kenv.webhookNamespaceSelector" -}}
{{- if .Values.webhook.namespaceSelector -}}
{{ toYaml .Values.webhook.namespaceSelector }}
{{- else -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: [{{ .Release.Namespace | quote }}]
{{- if .Values.watchNamespaces }}
  - key: kubernetes.io/metadata.name
    operator: In
    values: {{ toJson .Values.watchNamespaces }}
{{- end }}
{{- end }}
{{- end }}
