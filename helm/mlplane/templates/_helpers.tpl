{{/* The release's full name, shortened to fit a DNS label. */}}
{{- define "mlplane.fullname" -}}
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

{{- define "mlplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mlplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mlplane
{{- end -}}

{{- define "mlplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mlplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlplane.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mlplane.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "mlplane.peeringName" -}}
{{- default (include "mlplane.fullname" .) .Values.peering.name -}}
{{- end -}}

{{- define "mlplane.mlflowServerName" -}}
{{- printf "%s-mlflow" (include "mlplane.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The tracking URI the operator uses: the value given, else the chart's server, else none. */}}
{{- define "mlplane.mlflowTrackingUri" -}}
{{- if .Values.mlflow.trackingUri -}}
{{- .Values.mlflow.trackingUri -}}
{{- else if .Values.mlflow.server.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "mlplane.mlflowServerName" .) .Release.Namespace (int .Values.mlflow.server.port) -}}
{{- end -}}
{{- end -}}

{{/* The security context of every mlplane container: nothing to escalate, nothing to write. */}}
{{- define "mlplane.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "mlplane.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
