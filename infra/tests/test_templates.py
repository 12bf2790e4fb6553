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
RDS = INFRA / "cloudformation" / "tidepool-postgres-rds.yaml"
RDS_BUNDLE = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"


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


def _connect_as_any_user(t):
    for resource in _statement(t, "RdsIamConnectPolicy", "RdsIamConnect")["Resource"]:
        resource["Fn::Sub"][0] = resource["Fn::Sub"][0].replace("${IamDbUser}", "*")


def _connect_to_any_database(t):
    _statement(t, "RdsIamConnectPolicy", "RdsIamConnect")["Resource"][3] = {
        "Fn::Sub": "arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}:dbuser:*/${IamDbUser}"}


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
    _connect_as_any_user: "iam-mutating-wildcard",
    _connect_to_any_database: "iam-mutating-wildcard",
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


# ------------------------------------------------------ TLS and IAM to RDS
def _major(param="EngineVersion"):
    return {"Fn::Select": [0, {"Fn::Split": [".", {"Ref": param}]}]}


def test_managed_backends_refuse_plaintext_connections():
    """rds.force_ssl=1 whatever the engine version's default (RDS for
    PostgreSQL has it on from 15; older versions and Aurora may not)."""
    res = policy_rules.load_template(RDS)["Resources"]
    for group, kind, family in (("DbParameterGroup", "AWS::RDS::DBParameterGroup", "postgres${Major}"),
                                ("ClusterParameterGroup", "AWS::RDS::DBClusterParameterGroup",
                                 "aurora-postgresql${Major}")):
        assert res[group]["Type"] == kind
        props = res[group]["Properties"]
        assert props["Family"] == {"Fn::Sub": [family, {"Major": _major()}]}
        assert props["Parameters"] == {"rds.force_ssl": "1"}
    for instance in ("Primary", "Replica"):
        assert res[instance]["Properties"]["DBParameterGroupName"] == {"Ref": "DbParameterGroup"}
    assert res["Cluster"]["Properties"]["DBClusterParameterGroupName"] == {"Ref": "ClusterParameterGroup"}


def test_iam_database_authentication_is_on_and_grants_nothing_by_itself():
    """On in every branch (checkov's CKV_AWS_161/162 are IAM checks, never
    skipped): it only lets in users granted rds_iam, as principals allowed
    rds-db:connect, which this template gives nobody."""
    template = policy_rules.load_template(RDS)
    for name in ("Primary", "Replica", "Cluster"):
        assert template["Resources"][name]["Properties"]["EnableIAMDatabaseAuthentication"] is True
    actions = [a for _, key, value in policy_rules.walk(template["Resources"], "")
               if key == "Action" for a in policy_rules.leaves(value)]
    assert actions == ["sts:AssumeRole"]  # the monitoring role's trust, nothing else


def test_iam_db_resource_ids_output_names_every_database_tidepool_connects_to():
    """The primary and the replica have a DbiResourceId each (the writer
    endpoint keeps the primary's across a Multi-AZ failover); an Aurora
    cluster's resource id covers all its instances."""
    outputs = policy_rules.load_template(RDS)["Outputs"]
    assert outputs["IamDbResourceIds"]["Value"] == {"Fn::If": [
        "IsRds",
        {"Fn::Join": [",", [{"Fn::GetAtt": ["Primary", "DbiResourceId"]},
                            {"Fn::GetAtt": ["Replica", "DbiResourceId"]}]]},
        {"Fn::GetAtt": ["Cluster", "DBClusterResourceId"]}]}
    assert list(outputs)[-1] == "IamDbResourceIds"  # test_moto_stacks cuts it


def test_rds_iam_grant_is_one_database_user_on_the_named_databases_only_when_asked():
    template = policy_rules.load_template(CLUSTER)
    params = template["Parameters"]
    assert params["BackendAuth"]["Default"] == "password"
    assert template["Conditions"]["UsesRdsIam"] == {"Fn::Equals": [{"Ref": "BackendAuth"}, "rds_iam"]}
    policy = template["Resources"]["RdsIamConnectPolicy"]
    assert policy["Condition"] == "UsesRdsIam"
    assert policy["Properties"]["Roles"] == [{"Ref": "InstanceRole"}]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Action"]) == ("Allow", "rds-db:connect")
    assert len(statement["Resource"]) == 4
    for resource in statement["Resource"]:
        assert resource["Fn::Sub"][0] == (
            "arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}:dbuser:${Id}/${IamDbUser}")
    # Nothing else in the template may connect.
    connects = [path for path, doc in policy_rules.policy_documents(template)
                for s in policy_rules.leaves(doc["Statement"])
                if any("rds-db" in a for a in policy_rules.leaves(s["Action"]))]
    assert connects == ["RdsIamConnectPolicy"]
    # Neither parameter lets a wildcard into the ARN.
    user, ids = params["IamDbUser"]["AllowedPattern"], params["IamDbResourceIds"]["AllowedPattern"]
    assert not any(re.fullmatch(user, v) for v in ("*", "app*", "app/x"))
    assert not any(re.fullmatch(ids, v) for v in ("*", "db-*", "db-ABC/*", "db-A,db-B,db-C,db-D,db-E"))
    assert all(re.fullmatch(ids, v) for v in ("db-ABC123,db-DEF456", "cluster-XYZ789"))


def test_ca_bundle_comes_over_https_from_rds_or_from_the_artifact_bucket():
    params = policy_rules.load_template(CLUSTER)["Parameters"]
    url, key = params["BackendCaBundleUrl"], params["BackendCaBundleKey"]["AllowedPattern"]
    assert url["Default"] == RDS_BUNDLE
    assert re.fullmatch(url["AllowedPattern"], RDS_BUNDLE)
    # Both land inside single quotes in the user data.
    for bad in ("http://truststore.pki.rds.amazonaws.com/global/global-bundle.pem",
                "https://example.com/a.pem' ; curl evil '", "https://example.com/$(id)"):
        assert not re.fullmatch(url["AllowedPattern"], bad)
    assert re.fullmatch(key, "tidepool/rds-global-bundle.pem")
    assert not any(re.fullmatch(key, v) for v in ("a'; reboot; '", "tidepool/*"))  # the key is in an IAM ARN too


def test_aurora_takes_no_reader_endpoints_and_a_host_name_pattern_for_its_instances():
    """Aurora readers come from the cluster's topology: the stack refuses
    ReaderEndpoints before anything is made. InstanceHostPattern lands in the
    user data's render.env: a host name with one ?, nothing else."""
    template = policy_rules.load_template(CLUSTER)
    rule = template["Rules"]["NoReadersForAurora"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "BackendKind"}, "aurora"]}
    assert [a["Assert"] for a in rule["Assertions"]] == [
        {"Fn::EachMemberEquals": [{"Ref": "ReaderEndpoints"}, ""]}]
    pattern = template["Parameters"]["InstanceHostPattern"]["AllowedPattern"]
    assert all(re.fullmatch(pattern, v) for v in ("", "?.abc123.eu-west-1.rds.amazonaws.com",
                                                  "?.abc123.cn-north-1.rds.amazonaws.com.cn"))
    assert not any(re.fullmatch(pattern, v) for v in (
        "abc123.eu-west-1.rds.amazonaws.com", "?.?.rds.amazonaws.com",
        "?.x\nTIDEPOOL_ENV\nreboot", "?.x'$(id)", "?.x y"))


def test_query_cache_is_memcached_reachable_from_the_nodes_only():
    template = policy_rules.load_template(CLUSTER)
    res = template["Resources"]
    assert template["Conditions"]["UsesQueryCache"] == {"Fn::Equals": [{"Ref": "QueryCache"}, "memcached"]}
    assert template["Parameters"]["QueryCache"]["Default"] == "none"
    for name in ("QueryCacheSecurityGroup", "QueryCacheSubnetGroup", "QueryCacheCluster"):
        assert res[name]["Condition"] == "UsesQueryCache", name
    cluster = res["QueryCacheCluster"]["Properties"]
    assert cluster["Engine"] == "memcached"
    assert cluster["VpcSecurityGroupIds"] == [{"Fn::GetAtt": ["QueryCacheSecurityGroup", "GroupId"]}]
    ingress = res["QueryCacheSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert len(ingress) == 1
    assert ingress[0]["SourceSecurityGroupId"] == {"Fn::GetAtt": ["NodeSecurityGroup", "GroupId"]}
    assert (ingress[0]["FromPort"], ingress[0]["ToPort"]) == (11211, 11211)
    assert not any("CidrIp" in rule for rule in ingress)
