{{- define "tm.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "tm.labels" -}}
app.kubernetes.io/name: tenant-migrator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "tm.selector" -}}
app.kubernetes.io/name: tenant-migrator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
