{{- define "stackyard.name" -}}
{{- if eq .Values.mode "agent" }}stackyard-agent{{ else }}stackyard{{ end -}}
{{- end -}}

{{- define "stackyard.labels" -}}
app.kubernetes.io/name: {{ include "stackyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: stackyard
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "stackyard.selector" -}}
app.kubernetes.io/name: {{ include "stackyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "stackyard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "stackyard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
{{- end -}}

{{- define "stackyard.databaseEnv" -}}
{{- if .Values.database.existingSecret }}
- name: STACKYARD_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.database.existingSecret }}, key: url}
{{- else }}
- name: STACKYARD_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: stackyard-database, key: url, optional: true}
{{- end }}
{{- end -}}
