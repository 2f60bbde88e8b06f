{{/* The revision, checked: it is part of object names and label values. */}}
{{- define "strait.revision" -}}
{{- $rev := required "revision must be set" .Values.revision | toString -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$" $rev) -}}
{{- fail (printf "revision %q: use lowercase letters, digits and '-' (at most 40)" $rev) -}}
{{- end -}}
{{- if hasPrefix "tag-" $rev -}}
{{- fail (printf "revision %q: names starting with tag- are kept for tag Services (strait-tag-<tag>)" $rev) -}}
{{- end -}}
{{- $rev -}}
{{- end -}}

{{/* Name of the revision's Deployment, Service, ServiceAccount and RBAC objects. */}}
{{- define "strait.name" -}}
strait-{{ include "strait.revision" . }}
{{- end -}}

{{/* Name of the mesh ConfigMap strait reads for this revision. */}}
{{- define "strait.meshConfigName" -}}
{{- if eq (include "strait.revision" .) "default" -}}istio{{- else -}}istio-{{ include "strait.revision" . }}{{- end -}}
{{- end -}}

{{- define "strait.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Labels every object of the release carries. */}}
{{- define "strait.commonLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: strait
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
istio.io/rev: {{ include "strait.revision" . }}
{{- end -}}

{{/* Labels of the control plane's objects and pods. */}}
{{- define "strait.labels" -}}
{{ include "strait.commonLabels" . }}
app.kubernetes.io/name: strait
{{ include "strait.selectorLabels" . }}
{{- end -}}

{{/* What selects the control plane's pods (the revision Service, tag Services, the PDB). */}}
{{- define "strait.selectorLabels" -}}
app: strait
strait.io/rev: {{ include "strait.revision" . }}
{{- end -}}

{{- define "strait.gatewayName" -}}
{{ .Values.gateway.name }}-{{ include "strait.revision" . }}
{{- end -}}

{{- define "strait.gatewaySelectorLabels" -}}
app: {{ .Values.gateway.name }}
strait.io/rev: {{ include "strait.revision" . }}
{{- range $k, $v := .Values.gateway.labels }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/*
One injector webhook: where it sends pods and how. The selectors follow.
Arguments: root context, prefix of the webhook's name.
*/}}
{{- define "strait.webhook" -}}
{{- $ := index . 0 -}}
- name: {{ index . 1 }}sidecar-injector.istio.io
  admissionReviewVersions: ["v1"]
  clientConfig:
    # caBundle: filled in by strait at runtime, from its CA.
    service:
      name: {{ include "strait.name" $ }}
      namespace: {{ $.Release.Namespace }}
      path: /inject
      port: 443
  rules:
    - operations: ["CREATE"]
      apiGroups: [""]
      apiVersions: ["v1"]
      resources: ["pods"]
  sideEffects: None
  failurePolicy: {{ $.Values.sidecarInjectorWebhook.failurePolicy }}
  reinvocationPolicy: {{ $.Values.sidecarInjectorWebhook.reinvocationPolicy }}
  timeoutSeconds: {{ $.Values.sidecarInjectorWebhook.timeoutSeconds }}
{{- end -}}

{{/* Selectors that match nothing: a webhook switched off while a `default` tag owns it. */}}
{{- define "strait.neverMatch" -}}
  namespaceSelector:
    matchExpressions:
      - key: istio.io/deactivated
        operator: In
        values: ["never-match"]
  objectSelector:
    matchExpressions:
      - key: istio.io/deactivated
        operator: In
        values: ["never-match"]
{{- end -}}
