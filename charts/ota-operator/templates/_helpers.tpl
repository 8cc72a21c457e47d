{{/* The chart's name, at most 63 characters (a label value). */}}
{{- define "ota-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name: the release name, plus the chart's unless it contains it. */}}
{{- define "ota-operator.fullname" -}}
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

{{- define "ota-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ota-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "ota-operator.labels" -}}
{{ include "ota-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ota-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ota-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ota-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when the controller runs with leader election; refuses several replicas without it. */}}
{{- define "ota-operator.leaderElection" -}}
{{- $setting := toString .Values.leaderElection.enabled }}
{{- if eq $setting "auto" }}
{{- gt (int .Values.replicas) 1 }}
{{- else if eq $setting "true" }}
{{- true }}
{{- else }}
{{- if gt (int .Values.replicas) 1 }}
{{- fail (printf "replicas is %d but leaderElection.enabled is false: several controllers would write the same objects; enable leader election or set replicas to 1" (int .Values.replicas)) }}
{{- end }}
{{- false }}
{{- end }}
{{- end }}

{{- define "ota-operator.leaseName" -}}
{{- default (printf "%s-leader" (include "ota-operator.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}
