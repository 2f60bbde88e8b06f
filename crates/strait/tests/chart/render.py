"""Renders and lints the Helm chart with Helm's own Go SDK (PyPI `helm-python-sdk`).

Usage: render.py CHART_DIR CASES_JSON

CASES_JSON maps a case name to the values of that case. Prints one JSON object:
{"helm": version, "crds": [{"name", "data"}], "cases": {name: {"lint": report,
"manifests": {template: text}}}}. Exits non-zero, naming what is missing, when the SDK cannot
be imported.
"""

import json
import sys

try:
    import helm_python as helm
except ImportError as e:  # the test turns this into a failure with the install command
    sys.exit(f"cannot import helm_python ({e}): pip install helm-python-sdk==0.2.2")

RELEASE = "strait"
NAMESPACE = "istio-system"


def main():
    chart_dir, cases_json = sys.argv[1], sys.argv[2]
    cases = json.loads(cases_json)
    out = {"helm": helm.helm_sdk_version(), "cases": {}}
    with helm.Chart.load(chart_dir) as chart:
        out["crds"] = chart.crds
        for name, values in cases.items():
            manifests = chart.render(
                values, name=RELEASE, namespace=NAMESPACE, is_install=True
            )
            lint = helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE)
            out["cases"][name] = {"lint": lint, "manifests": manifests}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
