{{/* Chart name, overridable. */}}
{{- define "pwo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the release's namespaced objects: "<release>-<chart>", or the release name if it already contains the chart name. */}}
{{- define "pwo.fullname" -}}
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

{{/*
Name of objects outside the release namespace (ClusterRoles, bindings, Roles in
watched namespaces): prefixed with the release namespace, so two releases of the
same name in different namespaces (one per namespace set) never collide.
*/}}
{{- define "pwo.scopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "pwo.fullname" .) | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{- define "pwo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pwo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pwo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pwo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pwo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pwo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: prefect-workpool-operator
{{- end -}}

{{- define "pwo.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The job label Prometheus gives the operator's target: the metrics Service's name, as a
ServiceMonitor makes it, unless prometheusRule.job says otherwise (another scrape config). */}}
{{- define "pwo.metricsJob" -}}
{{- .Values.prometheusRule.job | default (printf "%s-metrics" (include "pwo.fullname" .)) -}}
{{- end -}}

{{/* Value combinations the schema cannot express; fail early with a clear message. */}}
{{- define "pwo.validate" -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.operator.livenessPort)) -}}
{{- fail (printf "metrics.port and operator.livenessPort must differ (both are %v)" .Values.metrics.port) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" -}}
{{- end -}}
{{- if and .Values.prometheusRule.enabled (not .Values.metrics.enabled) -}}
{{- fail "prometheusRule.enabled needs metrics.enabled (the alerts read the operator's metrics)" -}}
{{- end -}}
{{- if and .Values.grafanaDashboard.enabled (not .Values.metrics.enabled) -}}
{{- fail "grafanaDashboard.enabled needs metrics.enabled (the dashboard reads the operator's metrics)" -}}
{{- end -}}
{{- end -}}

{{/*
What the operator does in the namespaces it serves (docs/rbac.md has the evidence):
kopf lists and watches policies, patches them (finalizer, its annotations) and their
status, and posts Events; the operator reads the Secrets policies reference.
*/}}
{{- define "pwo.policyRules" -}}
- apiGroups: ["prefectops.dev"]
  resources: ["prefectworkpoolpolicies"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["prefectops.dev"]
  resources: ["prefectworkpoolpolicies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: {{ ternary (list "get" "list" "watch") (list "get") .Values.rbac.watchSecrets | toJson }}
  {{- with .Values.rbac.secretNames }}
  resourceNames: {{ toJson . }}
  {{- end }}
{{- end -}}

{{- /* The Lease of a shard: (list $ shardName); "" is the default shard. */}}
{{- define "pwo.leaseName" -}}
{{- $root := index . 0 -}}
{{- $shard := index . 1 -}}
{{- $base := include "pwo.fullname" $root -}}
{{- if $shard }}{{ printf "%s-%s" $base $shard | trunc 253 }}{{ else }}{{ $base }}{{ end -}}
{{- end -}}
