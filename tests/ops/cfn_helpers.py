"""Load the CloudFormation template and stand in for resource types moto cannot create."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parents[2] / "deployments" / "aws" / "template.yaml"


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain data with every intrinsic in long form (cfn-lint's decoder)."""
    from cfnlint.decode import cfn_yaml

    return cfn_yaml.load(str(path))


def _replace_refs(node: Any, removed: set[str]) -> Any:
    """Replace Ref/GetAtt/Sub references to ``removed`` resources by stub strings."""
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in removed:
            return f"stub-{node['Ref']}"
        if set(node) == {"Fn::GetAtt"} and node["Fn::GetAtt"][0] in removed:
            name, attr = node["Fn::GetAtt"][0], node["Fn::GetAtt"][1]
            return f"stub-{name}-{attr}".replace(".", "-").lower()
        if set(node) == {"Fn::Sub"}:
            value = node["Fn::Sub"]
            text, variables = (value, {}) if isinstance(value, str) else value
            for name in removed:
                text = re.sub(r"\$\{" + name + r"(\.[A-Za-z.]+)?\}", f"stub-{name}", text)
            variables = {k: _replace_refs(v, removed) for k, v in variables.items()}
            return {"Fn::Sub": [text, variables] if variables else text}
        return {k: _replace_refs(v, removed) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_refs(v, removed) for v in node]
    return node


def moto_compatible(template: dict[str, Any], supported: set[str]) -> tuple[dict, list[str]]:
    """The template without resources whose type moto lacks, and the logical ids removed."""
    resources = template["Resources"]
    removed = {name for name, res in resources.items() if res["Type"] not in supported}
    kept = {}
    for name, res in resources.items():
        if name in removed:
            continue
        res = dict(res)
        depends = res.get("DependsOn")
        if depends:
            depends = [depends] if isinstance(depends, str) else depends
            depends = [d for d in depends if d not in removed]
            if depends:
                res["DependsOn"] = depends
            else:
                res.pop("DependsOn")
        kept[name] = res
    out = dict(template)
    out["Resources"] = kept
    out = _replace_refs(out, removed)
    return out, sorted(removed)
