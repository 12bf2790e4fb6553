#!/usr/bin/env python3
"""tidepool's own rules for its CloudFormation templates.

Usage: policy_rules.py TEMPLATE...   (prints each finding; exit 1 if any)

Rules (ids appear in findings and in infra/tests/bad/*.yaml "# expect:" lines):
  iam-mutating-wildcard  an Allow statement grants a non-read action (anything
                         but Describe*/List*/Get*) on Resource "*", or on an
                         ARN with a wildcard in it ("...:cluster:*"); only a
                         log group's streams ("log-group:NAME:*") may be open
  iam-wildcard-read      a read action on "*" that AWS can scope (only the few
                         in UNSCOPABLE_READS may use "*")
  iam-wildcard-action    an Action with a wildcard, or Allow with NotAction /
                         NotResource
  sg-open-control-port   an ingress rule reaching 9000, 9694 or 9898 from
                         0.0.0.0/0 or ::/0, or from a CIDR the template cannot
                         prove narrower (a parameter without a pattern that
                         rejects /0, or with an open default)
  plaintext-secret       a parameter that carries a secret value, or a password
                         property that is not a {{resolve:...}} dynamic reference

Fn::If is followed into both branches: a rule fails if any branch breaks it.
"""
import ipaddress
import re
import sys
from dataclasses import dataclass

import yaml

CONTROL_PORTS = (9000, 9694, 9898)
READ_PREFIXES = ("Describe", "List", "Get")
# Read actions AWS does not let a policy scope to resources.
UNSCOPABLE_READS = {
    "ec2:DescribeAddresses",
    "ec2:DescribeInstances",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeRouteTables",
}
# The one partial wildcard a write may use: the streams of one log group.
LOG_STREAMS = re.compile(r"arn:[^:]+:logs:[^:]+:[^:]+:log-group:[^:*]+:\*")
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|credential|privatekey|sharedkey)")
SECRET_REFERENCE_SUFFIXES = ("Arn", "Arns", "Name", "Id", "Path")
PASSWORD_PROPERTIES = {"MasterUserPassword", "Password", "AdminPassword", "SecretString"}


@dataclass(frozen=True)
class Finding:
    rule: str
    template: str
    where: str
    message: str

    def __str__(self):
        return "%s: %s: [%s] %s" % (self.template, self.where, self.rule, self.message)


# ------------------------------------------------------------------ loading
class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags, turned into their long form."""


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


_Loader.add_multi_constructor("!", _tag)
# CloudFormation keeps dates as strings ("2012-10-17").
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in _Loader.yaml_implicit_resolvers.items()
}


def load_template(path):
    with open(path) as f:
        return yaml.load(f, Loader=_Loader)


# ------------------------------------------------------------------ helpers
def leaves(value):
    """Every concrete value a template expression may take, both Fn::If
    branches included; AWS::NoValue takes none. Lists are flattened."""
    if isinstance(value, list):
        out = []
        for v in value:
            out += leaves(v)
        return out
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "Fn::If":
            return leaves(arg[1]) + leaves(arg[2])
        if key == "Ref" and arg == "AWS::NoValue":
            return []
    return [value]


def is_open_cidr(text):
    try:
        return ipaddress.ip_network(str(text), strict=False).prefixlen == 0
    except ValueError:
        return False


def walk(value, path):
    """(path, key, value) for every mapping entry below value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path, k, v
            yield from walk(v, path + "." + str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, "%s[%d]" % (path, i))


# ---------------------------------------------------------------------- IAM
def policy_documents(template):
    for name, res in (template.get("Resources") or {}).items():
        for path, key, value in walk(res.get("Properties") or {}, name):
            if key == "PolicyDocument":
                yield path, value


def resource_text(resource):
    """A resource as text when the template spells it out (a literal or the
    template of an Fn::Sub), else None (a Ref or GetAtt names one resource)."""
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        resource = resource["Fn::Sub"]
        resource = resource[0] if isinstance(resource, list) else resource
    return resource if isinstance(resource, str) else None


def check_statement(where, stmt, found):
    if not isinstance(stmt, dict) or stmt.get("Effect") != "Allow":
        return
    if "NotAction" in stmt or "NotResource" in stmt:
        found("iam-wildcard-action", where, "Allow with NotAction/NotResource grants all but a few")
    actions = [a for a in leaves(stmt.get("Action", [])) if isinstance(a, str)]
    resources = leaves(stmt.get("Resource", []))
    texts = [resource_text(r) for r in resources]
    star = "*" in texts
    partial = [r for r in texts if r and r != "*" and "*" in r and not LOG_STREAMS.fullmatch(r)]
    for action in actions:
        if "*" in action:
            found("iam-wildcard-action", where, "action %r has a wildcard; name each action" % action)
            continue
        verb = action.split(":", 1)[-1]
        if partial and not verb.startswith(READ_PREFIXES):
            found("iam-mutating-wildcard", where,
                  "%s on %s: name the resources it changes, no wildcards" % (action, partial[0]))
        if not star:
            continue
        if not verb.startswith(READ_PREFIXES):
            found("iam-mutating-wildcard", where,
                  "%s on Resource \"*\": scope it to the resources it changes" % action)
        elif action not in UNSCOPABLE_READS:
            found("iam-wildcard-read", where,
                  "%s on Resource \"*\": AWS can scope it, so scope it" % action)


def check_iam(template, found):
    for path, doc in policy_documents(template):
        for i, stmt in enumerate(leaves((doc or {}).get("Statement", []))):
            check_statement("%s.Statement[%d]" % (path, i), stmt, found)


# ---------------------------------------------------------- security groups
def ingress_rules(template):
    for name, res in (template.get("Resources") or {}).items():
        props = res.get("Properties") or {}
        if res.get("Type") == "AWS::EC2::SecurityGroup":
            for i, rule in enumerate(leaves(props.get("SecurityGroupIngress", []))):
                yield "%s.SecurityGroupIngress[%d]" % (name, i), rule
        elif res.get("Type") == "AWS::EC2::SecurityGroupIngress":
            yield name, props


def port_range(rule):
    """(low, high) the rule opens, or None when it opens every port."""
    proto = str(rule.get("IpProtocol", "-1")).lower()
    if proto in ("-1", "all"):
        return None
    low, high = rule.get("FromPort"), rule.get("ToPort")
    if not isinstance(low, int) or not isinstance(high, int) or low < 0:
        return None  # unknown (an expression) or -1: assume every port
    return low, high


def cidr_is_open(template, value):
    """True when the CIDR is, or may be made by a parameter, all addresses."""
    if isinstance(value, str):
        return is_open_cidr(value)
    if isinstance(value, dict) and set(value) == {"Ref"}:
        param = (template.get("Parameters") or {}).get(value["Ref"])
        if param is None:
            return False  # a resource's attribute, not user input
        if is_open_cidr(param.get("Default", "")):
            return True
        allowed = param.get("AllowedValues")
        if allowed is not None:
            return any(is_open_cidr(v) for v in allowed)
        pattern = param.get("AllowedPattern")
        if pattern is None:
            return True
        return any(re.fullmatch(pattern, c) for c in ("0.0.0.0/0", "::/0"))
    return True  # an expression the rule cannot evaluate


def check_security_groups(template, found):
    for where, rule in ingress_rules(template):
        if not isinstance(rule, dict):
            continue
        span = port_range(rule)
        ports = [p for p in CONTROL_PORTS if span is None or span[0] <= p <= span[1]]
        if not ports:
            continue
        for key in ("CidrIp", "CidrIpv6"):
            if key in rule and any(cidr_is_open(template, v) for v in leaves(rule[key])):
                found("sg-open-control-port", where,
                      "port(s) %s reachable from %s=%r: only peers (their security group) "
                      "and a narrow admin CIDR may reach them" % (ports, key, rule[key]))


# ------------------------------------------------------------------ secrets
def is_dynamic_reference(value):
    if isinstance(value, dict) and "Fn::Sub" in value:
        value = value["Fn::Sub"]
        value = value[0] if isinstance(value, list) else value
    return isinstance(value, str) and value.startswith("{{resolve:")


def check_secrets(template, found):
    for name, param in (template.get("Parameters") or {}).items():
        if SECRET_NAME.search(name) and not name.endswith(SECRET_REFERENCE_SUFFIXES):
            found("plaintext-secret", "Parameters." + name,
                  "a secret value as a parameter; pass a Secrets Manager ARN instead")
    for name, res in (template.get("Resources") or {}).items():
        for path, key, value in walk(res.get("Properties") or {}, name):
            if key in PASSWORD_PROPERTIES and not is_dynamic_reference(value):
                found("plaintext-secret", path + "." + key,
                      "use a {{resolve:secretsmanager:...}} dynamic reference")


# ---------------------------------------------------------------------- API
RULES = (check_iam, check_security_groups, check_secrets)


def check_template(template, name):
    findings = []

    def found(rule, where, message):
        findings.append(Finding(rule, name, where, message))

    for rule in RULES:
        rule(template, found)
    return findings


def check_file(path):
    return check_template(load_template(path), str(path))


def main(paths):
    if not paths or paths[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if paths else 2
    findings = [f for p in paths for f in check_file(p)]
    for f in findings:
        print(f)
    print("policy_rules: %d template(s), %d finding(s)" % (len(paths), len(findings)))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
