{{/* Name of every object: the release name, suffixed with the chart name unless it already holds it. */}}
{{- define "fedquilt-coordinator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select this release's pods (immutable once installed). */}}
{{- define "fedquilt-coordinator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "fedquilt-coordinator.labels" -}}
{{ include "fedquilt-coordinator.selectorLabels" . }}
app.kubernetes.io/component: coordinator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
Turn whole-number floats into integers, in place, in a nested dict. Helm reads every number in a
values file as a float, and toToml would then write `rounds = 10.0` where the coordinator (and the
agents, for `federation.train`) expect integers; every float field accepts an integer.
*/}}
{{- define "fedquilt-coordinator.wholeNumbersToInt" -}}
{{- range $k, $v := . -}}
{{- if kindIs "map" $v -}}
{{- include "fedquilt-coordinator.wholeNumbersToInt" $v -}}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) -}}
{{- $_ := set $ $k (int64 $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}
