{{/* the image of every container, and of the static env's init container */}}
{{- define "whoexec.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* the labels of every object: the kustomize base's, and Helm's own two */}}
{{- define "whoexec.labels" -}}
app.kubernetes.io/part-of: whoexec
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "whoexec.selector" -}}
app.kubernetes.io/name: whoexec
app.kubernetes.io/component: {{ . }}
{{- end -}}
