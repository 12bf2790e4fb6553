"""Static checks of every template: cfn-lint, checkov and the project rules,
and proof that the rules bite on deliberately bad templates."""
import copy
import re
import subprocess
import sys

import pytest
import yaml

import policy_rules
from conftest import BAD_TEMPLATES, CHECKOV_CONFIG, INFRA, TEMPLATES

POLICY_RULES = INFRA / "tests" / "policy_rules.py"
CLUSTER = INFRA / "cloudformation" / "tidepool-cluster.yaml"


def ids(paths):
    return [p.name for p in paths]


@pytest.mark.parametrize("template", TEMPLATES, ids=ids(TEMPLATES))
def test_cfn_lint_is_clean(template, cfn_lint_report):
    assert cfn_lint_report[str(template)] == []


@pytest.mark.parametrize("template", TEMPLATES, ids=ids(TEMPLATES))
def test_checkov_passes(template, checkov_report):
    failures = [(c, r) for path, c, r in checkov_report if path == str(template)]
    assert failures == []


def test_checkov_catches_the_any_resource_address_move(checkov_report):
    """checkov is a second line: it too fails ec2:AssociateAddress on "*"."""
    bad = str(INFRA / "tests" / "bad" / "eip-associate-any-resource.yaml")
    assert any(path == bad and check == "CKV_AWS_111" for path, check, _ in checkov_report)


# ---------------------------------------------------------------- checkov skips
def _checkov_checks():
    from checkov.cloudformation.checks.resource.registry import cfn_registry

    return {c.id: c for checks in cfn_registry.checks.values() for c in checks}


def _assert_non_iam_and_justified(check_id, reason, checks):
    assert check_id in checks, "%s is not a checkov CloudFormation check" % check_id
    categories = {str(c) for c in checks[check_id].categories}
    assert "CheckCategories.IAM" not in categories, (
        "%s is an IAM check: fix the policy instead of skipping it" % check_id)
    assert len(reason.strip()) >= 30, "%s is skipped without a reason" % check_id


def test_global_checkov_skips_are_justified_non_iam_checks():
    checks = _checkov_checks()
    lines = [l for l in CHECKOV_CONFIG.read_text().splitlines() if re.match(r"\s*- CKV", l)]
    listed = yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"]
    assert len(lines) == len(listed)
    for line in lines:
        check_id, _, reason = line.strip()[2:].partition("#")
        _assert_non_iam_and_justified(check_id.strip(), reason, checks)


@pytest.mark.parametrize("template", TEMPLATES, ids=ids(TEMPLATES))
def test_inline_checkov_skips_are_justified_non_iam_checks(template):
    checks = _checkov_checks()
    resources = policy_rules.load_template(template)["Resources"]
    for name, res in resources.items():
        for skip in (res.get("Metadata") or {}).get("checkov", {}).get("skip", []):
            _assert_non_iam_and_justified(skip["id"], skip.get("comment", ""), checks)
    text = template.read_text()
    assert "checkov:skip" not in text, "use Metadata checkov: skip: with a comment"


# ------------------------------------------------------------------ project rules
@pytest.mark.parametrize("template", TEMPLATES, ids=ids(TEMPLATES))
def test_project_rules_pass(template):
    assert [str(f) for f in policy_rules.check_file(template)] == []


def expected_rules(path):
    return {m.group(1) for m in re.finditer(r"^# expect: (\S+)", path.read_text(), re.M)}


@pytest.mark.parametrize("template", BAD_TEMPLATES, ids=ids(BAD_TEMPLATES))
def test_project_rules_fail_the_bad_template(template):
    expected = expected_rules(template)
    assert expected, "%s needs a '# expect: <rule>' line" % template.name
    assert {f.rule for f in policy_rules.check_file(template)} == expected


def test_bad_templates_cover_the_acceptance_cases():
    rules = {r for t in BAD_TEMPLATES for r in expected_rules(t)}
    assert {"iam-mutating-wildcard", "sg-open-control-port"} <= rules
    names = {t.name for t in BAD_TEMPLATES}
    assert {"eip-associate-any-resource.yaml", "admin-port-open-to-world.yaml"} <= names


def test_rule_command_exits_nonzero_on_each_bad_template_and_zero_on_ours():
    for template in BAD_TEMPLATES:
        run = subprocess.run([sys.executable, str(POLICY_RULES), str(template)],
                             capture_output=True, text=True)
        assert run.returncode == 1, template.name
        assert "[%s]" % sorted(expected_rules(template))[0] in run.stdout
    run = subprocess.run([sys.executable, str(POLICY_RULES), *map(str, TEMPLATES)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout


# Mutations of the real cluster template: each breaks one promise and the
# rules must notice, so they are known to read the shapes the template uses.
def _statement(t, resource, sid):
    doc = t["Resources"][resource]["Properties"]["PolicyDocument"]
    return next(s for s in doc["Statement"] if s.get("Sid") == sid)


def _eip_on_anything(t):
    _statement(t, "MoveEipPolicy", "MoveElasticIp")["Resource"] = "*"


def _record_on_any_zone(t):
    _statement(t, "MoveRecordPolicy", "UpsertServiceRecord")["Resource"] = {
        "Fn::If": ["CreateZone", "*", {"Ref": "ExistingHostedZoneId"}]}


def _routes_on_any_table(t):
    _statement(t, "MoveRoutePolicy", "PointVipRoute")["Resource"].append("*")


def _aurora_failover_anywhere(t):
    _statement(t, "FailoverAuroraPolicy", "FailOverAurora")["Resource"] = "*"


def _route_on_every_table(t):
    _statement(t, "MoveRoutePolicy", "PointVipRoute")["Resource"] = {
        "Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:route-table/*"}


def _invoke_any_function(t):
    _statement(t, "InvokeFailoverPolicy", "InvokeFailover")["Resource"] = "*"


def _admin_port_to_world(t):
    t["Resources"]["AdminIngressOperators"]["Properties"]["CidrIp"] = "0.0.0.0/0"


def _admin_cidr_unconstrained(t):
    del t["Parameters"]["AdminCidr"]["AllowedPattern"]


def _heartbeat_to_ipv6_world(t):
    props = t["Resources"]["HeartbeatIngress"]["Properties"]
    del props["SourceSecurityGroupId"]
    props["CidrIpv6"] = "::/0"


def _watchdog_inline_to_world(t):
    t["Resources"]["NodeSecurityGroup"]["Properties"]["SecurityGroupIngress"] = [
        {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9100, "CidrIp": "0.0.0.0/0"}]


MUTATIONS = {
    _eip_on_anything: "iam-mutating-wildcard",
    _record_on_any_zone: "iam-mutating-wildcard",
    _routes_on_any_table: "iam-mutating-wildcard",
    _aurora_failover_anywhere: "iam-mutating-wildcard",
    _route_on_every_table: "iam-mutating-wildcard",
    _invoke_any_function: "iam-mutating-wildcard",
    _admin_port_to_world: "sg-open-control-port",
    _admin_cidr_unconstrained: "sg-open-control-port",
    _heartbeat_to_ipv6_world: "sg-open-control-port",
    _watchdog_inline_to_world: "sg-open-control-port",
}


@pytest.mark.parametrize("mutate", list(MUTATIONS), ids=[m.__name__.strip("_") for m in MUTATIONS])
def test_project_rules_fail_a_broken_cluster_template(mutate):
    template = copy.deepcopy(policy_rules.load_template(CLUSTER))
    assert policy_rules.check_template(template, "cluster") == []
    mutate(template)
    assert MUTATIONS[mutate] in {f.rule for f in policy_rules.check_template(template, "cluster")}


# What moto ignores, checked in the template itself.
def test_route_table_mode_turns_off_source_dest_check_on_the_fixed_enis():
    template = policy_rules.load_template(CLUSTER)
    assert template["Conditions"]["IsRouteTable"] == {"Fn::Equals": [{"Ref": "AddressMode"}, "route_table"]}
    for eni in ("EniA", "EniB", "EniC"):
        props = template["Resources"][eni]["Properties"]
        assert props["SourceDestCheck"] == {"Fn::If": ["IsRouteTable", False, True]}


def test_route53_mode_zone_is_private_to_the_vpc():
    zone = policy_rules.load_template(CLUSTER)["Resources"]["HostedZone"]["Properties"]
    assert zone["VPCs"] == [{"VPCId": {"Ref": "VpcId"}, "VPCRegion": {"Ref": "AWS::Region"}}]


def test_nodes_require_imdsv2_and_expose_their_tags():
    for template in TEMPLATES:
        for name, res in policy_rules.load_template(template)["Resources"].items():
            if res["Type"] == "AWS::EC2::LaunchTemplate":
                options = res["Properties"]["LaunchTemplateData"]["MetadataOptions"]
                assert options["HttpTokens"] == "required", name
                assert options["InstanceMetadataTags"] == "enabled", name
