{{/* Chart name, overridable for forks. */}}
{{- define "starmesh.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Base name of the release's objects: the release name when it already says
"starmesh" (the usual `helm install starmesh ...`), else "<release>-starmesh".
*/}}
{{- define "starmesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The operator's Deployment, ServiceAccount, roles and default Lease name. */}}
{{- define "starmesh.operatorName" -}}
{{- printf "%s-operator" (include "starmesh.fullname" .) -}}
{{- end -}}

{{- define "starmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "starmesh.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "starmesh.leaseName" -}}
{{- default (include "starmesh.operatorName" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- define "starmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "starmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "starmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "starmesh.labels" -}}
helm.sh/chart: {{ include "starmesh.chart" . }}
{{ include "starmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: starmesh
{{- end -}}

{{- define "starmesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "starmesh.nodeImage" -}}
{{- printf "%s:%s" .Values.nodeImage.repository (default .Chart.AppVersion .Values.nodeImage.tag) -}}
{{- end -}}
