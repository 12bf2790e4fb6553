"""The stacks created in moto's CloudFormation (a moto server on a free
loopback port), their outputs checked against the resources moto made, the
IAM policies as CloudFormation resolved them, and the config that the nodes'
user data would render.

moto leaves some things out, and the tests say so where it matters:
AWS::SecretsManager::Secret and AWS::RDS::DBCluster are not supported by its
CloudFormation (the secrets and the Aurora cluster are made with their own
APIs instead); it ignores an ENI's SourceDestCheck and a hosted zone's VPCs
(test_templates checks those in the template); it does not split the default
of a CommaDelimitedList parameter (the tests pass such lists explicitly); its
Ref to an AWS::RDS::DBParameterGroup yields an object its own DBInstance then
trips over, and it has no Fn::GetAtt DbiResourceId (the RDS stack is made
without its instances' parameter group and its IamDbResourceIds output;
test_templates checks those in the template, and the cluster stacks take the
resource ids from the RDS API)."""
import ast
import base64
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import boto3
import pytest

import policy_rules
from conftest import INFRA, RENDERER

REGION = "us-east-1"  # moto answers Fn::GetAZs with its default region's zones
VPC_CIDR = "10.0.0.0/16"
PUBLIC_CIDRS = "10.0.0.0/24,10.0.1.0/24,10.0.2.0/24"
PRIVATE_CIDRS = "10.0.10.0/24,10.0.11.0/24,10.0.12.0/24"
CLIENT_CIDRS = "10.0.0.0/16,172.16.5.0/24"
ADMIN_CIDR = "10.99.0.0/24"
ARTIFACTS = "tidepool-artifacts-test"
USER_DATA_LIMIT = 16384
NODES = ("tp-a", "tp-b", "tp-c")

# (address mode, escalation via, backend kind): every mode with both ways of
# escalating, every backend kind twice.
CASES = [
    ("eip", "in_process", "ec2"),
    ("eip", "lambda", "rds"),
    ("route53", "in_process", "aurora"),
    ("route53", "lambda", "ec2"),
    ("route_table", "in_process", "rds"),
    ("route_table", "lambda", "aurora"),
]
CASE_IDS = ["-".join(c) for c in CASES]

MOVE_ACTIONS = {
    "eip": {"ec2:AssociateAddress", "ec2:DisassociateAddress"},
    "route53": {"route53:ChangeResourceRecordSets"},
    "route_table": {"ec2:CreateRoute", "ec2:ReplaceRoute", "ec2:DeleteRoute"},
}
BACKEND_ACTIONS = {"ec2": set(), "rds": {"rds:RebootDBInstance"}, "aurora": {"rds:FailoverDBCluster"}}
RDS_BUNDLE = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
CA_BUNDLE_KEY = "tidepool/backend-ca.pem"
# How a case logs in to its backends beyond the defaults (password; TLS
# prefer toward ec2, verify-full toward rds/aurora with the RDS bundle
# downloaded at boot): an IAM token, a password_secret for the backend
# password (the applications keeping a client password of their own), or
# the CA bundle shipped in the artifact bucket.
LOGIN = {
    ("eip", "lambda", "rds"): "rds_iam",
    ("route_table", "lambda", "aurora"): "rds_iam",
    ("route53", "in_process", "aurora"): "backend_secret",
    ("route_table", "in_process", "rds"): "ca_bundle_key",
}


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def aws(moto_endpoint):
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name=REGION)
    return lambda service: session.client(service, endpoint_url=moto_endpoint)


def create_stack(aws, name, template, adapt=None, **params):
    cfn = aws("cloudformation")
    body = (INFRA / "cloudformation" / template).read_text()
    cfn.create_stack(
        StackName=name,
        TemplateBody=adapt(body) if adapt else body,
        Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"])
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    resources = {r["LogicalResourceId"]: r.get("PhysicalResourceId")
                 for r in cfn.describe_stack_resources(StackName=name)["StackResources"]
                 if "LogicalResourceId" in r}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return outputs, resources


@pytest.fixture(scope="module")
def network(aws):
    outputs, _ = create_stack(aws, "tp-network", "tidepool-network.yaml", VpcCidr=VPC_CIDR,
                              PublicSubnetCidrs=PUBLIC_CIDRS, PrivateSubnetCidrs=PRIVATE_CIDRS,
                              NatGateway="true", ApiEndpoints="true")
    return outputs


@pytest.fixture(scope="module")
def secrets(aws):
    """The secrets tidepool-secrets.yaml generates (AppClientSecretArn with
    SeparateClientLogin=true), in the same shapes."""
    sm = aws("secretsmanager")
    values = {
        "WatchdogKeySecretArn": "k" * 64,
        "AdminTokenSecretArn": "t" * 48,
        "AppUserSecretArn": json.dumps({"username": "app", "password": "app-password-1"}),
        "AppClientSecretArn": json.dumps({"username": "app", "password": "app-client-password-1"}),
        "ReplicationUserSecretArn": json.dumps({"username": "replicator", "password": "repl-password-1"}),
    }
    return {key: sm.create_secret(Name="tp-secrets/" + key, SecretString=value)["ARN"]
            for key, value in values.items()}


@pytest.fixture(scope="module")
def artifacts(aws):
    s3 = aws("s3")
    s3.create_bucket(Bucket=ARTIFACTS)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    s3.put_object(Bucket=ARTIFACTS, Key="lambda/tidepool-failover.zip", Body=zipped.getvalue())
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as t:
        info = tarfile.TarInfo("tidepool/tidepool")
        info.size, info.mode = 10, 0o755
        t.addfile(info, io.BytesIO(b"#!/bin/sh\n"))
    s3.put_object(Bucket=ARTIFACTS, Key="tidepool/tidepool.tar.gz", Body=tarball.getvalue())
    s3.put_object(Bucket=ARTIFACTS, Key=CA_BUNDLE_KEY, Body=b"-----BEGIN CERTIFICATE-----\n")
    return {"ArtifactBucket": ARTIFACTS, "ArtifactKey": "tidepool/tidepool.tar.gz",
            "LambdaBucket": ARTIFACTS, "LambdaKey": "lambda/tidepool-failover.zip"}


@pytest.fixture(scope="module")
def postgres_ec2(aws, network, secrets):
    outputs, resources = create_stack(
        aws, "tp-postgres", "tidepool-postgres-ec2.yaml", VpcId=network["VpcId"], VpcCidr=VPC_CIDR,
        SubnetIds=network["PrivateSubnetIds"], ClientCidr=VPC_CIDR,
        AppUserSecretArn=secrets["AppUserSecretArn"],
        ReplicationUserSecretArn=secrets["ReplicationUserSecretArn"])
    return outputs, resources


def for_moto(body):
    """The RDS template minus what moto cannot create (see above): the
    instances' DBParameterGroupName and the last output, IamDbResourceIds."""
    line = "      DBParameterGroupName: !Ref DbParameterGroup\n"
    assert body.count(line) == 2
    body, _, cut = body.replace(line, "").partition("  # Keep last: infra/tests cuts it")
    assert re.findall(r"^  (\S+):", cut, re.M) == ["IamDbResourceIds"]  # one output cut, no more
    return body


@pytest.fixture(scope="module")
def postgres_rds(aws, network, secrets):
    outputs, _ = create_stack(
        aws, "tp-rds", "tidepool-postgres-rds.yaml", adapt=for_moto,
        BackendKind="rds", VpcId=network["VpcId"],
        SubnetIds=network["PrivateSubnetIds"], ClientCidr=VPC_CIDR,
        AppUserSecretArn=secrets["AppUserSecretArn"])
    return outputs


@pytest.fixture(scope="module")
def aurora(aws):
    """An Aurora cluster made with the RDS API (moto's CloudFormation has no
    AWS::RDS::DBCluster), standing in for tidepool-postgres-rds.yaml's."""
    cluster = aws("rds").create_db_cluster(
        DBClusterIdentifier="tp-aurora", Engine="aurora-postgresql", EngineVersion="16.4",
        MasterUsername="app", MasterUserPassword="app-password-1")["DBCluster"]
    return cluster


@pytest.fixture(scope="module")
def backend_params(postgres_ec2, postgres_rds, aurora):
    return {
        "ec2": {"BackendHosts": postgres_ec2[0]["BackendHosts"]},
        "rds": {"WriterEndpoint": postgres_rds["WriterEndpoint"],
                "ReaderEndpoints": postgres_rds["ReaderEndpoints"],
                "DbInstanceIdentifier": postgres_rds["DbInstanceIdentifier"]},
        # No ReaderEndpoints: tidepool reads the cluster's topology.
        "aurora": {"WriterEndpoint": aurora["Endpoint"], "DbClusterIdentifier": aurora["DBClusterIdentifier"]},
    }


# One Aurora case names its instances' endpoints; the other lets the renderer
# derive them from the cluster endpoint.
INSTANCE_HOST_PATTERN = "?.tp-aurora.db.example.internal"
GIVEN_PATTERN = {("route_table", "lambda", "aurora"): INSTANCE_HOST_PATTERN}


@pytest.fixture(scope="module")
def iam_db_resource_ids(aws, postgres_rds, aurora):
    """What tidepool-postgres-rds's IamDbResourceIds output holds (moto's
    CloudFormation cannot make it): the RDS primary's and replica's
    DbiResourceIds, the Aurora cluster's resource id."""
    rds = aws("rds")
    primary = rds.describe_db_instances(
        DBInstanceIdentifier=postgres_rds["DbInstanceIdentifier"])["DBInstances"][0]
    replica = rds.describe_db_instances(
        DBInstanceIdentifier=primary["ReadReplicaDBInstanceIdentifiers"][0])["DBInstances"][0]
    return {"rds": [primary["DbiResourceId"], replica["DbiResourceId"]],
            "aurora": [aurora["DbClusterResourceId"]]}


def login_params(case, secrets, iam_db_resource_ids):
    login, kind = LOGIN.get(case), case[2]
    if login == "rds_iam":
        return {"BackendAuth": "rds_iam", "IamDbUser": "app",
                "IamDbResourceIds": ",".join(iam_db_resource_ids[kind])}
    if login == "backend_secret":
        return {"UserSecretArns": secrets["AppClientSecretArn"],
                "BackendSecretArns": secrets["AppUserSecretArn"]}
    if login == "ca_bundle_key":
        return {"BackendCaBundleKey": CA_BUNDLE_KEY}
    return {}


_clusters = {}


@pytest.fixture(scope="module")
def cluster(aws, network, secrets, artifacts, backend_params, iam_db_resource_ids):
    """cluster(case) -> (params, outputs, resources), each stack created once."""
    def make(case):
        if case not in _clusters:
            mode, via, kind = case
            subnets = network["PublicSubnetIds"] if mode == "eip" else network["PrivateSubnetIds"]
            params = dict(
                artifacts, VpcId=network["VpcId"], VpcCidr=VPC_CIDR, SubnetIds=subnets,
                ClientCidrs=CLIENT_CIDRS, AdminCidr=ADMIN_CIDR, AddressMode=mode, EscalationVia=via,
                BackendKind=kind, UserSecretArns=secrets["AppUserSecretArn"],
                WatchdogKeySecretArn=secrets["WatchdogKeySecretArn"],
                AdminTokenSecretArn=secrets["AdminTokenSecretArn"], **backend_params[kind])
            if mode == "route_table":
                params["RouteTableIds"] = network["PrivateRouteTableIds"]
            params.update(login_params(case, secrets, iam_db_resource_ids))
            if case in GIVEN_PATTERN:
                params["InstanceHostPattern"] = GIVEN_PATTERN[case]
            outputs, resources = create_stack(aws, "tp-" + "-".join(case).replace("_", "-"),
                                              "tidepool-cluster.yaml", **params)
            _clusters[case] = (params, outputs, resources)
        return _clusters[case]
    return make


def policy_documents_of(aws, role_name):
    """Every statement of a role's inline and attached policies, resolved."""
    iam = aws("iam")
    docs = []
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]
        if isinstance(doc, str):  # moto hands some back as text, JSON or Python repr
            try:
                doc = json.loads(doc)
            except ValueError:
                doc = ast.literal_eval(doc)
        docs.append(doc)
    for attached in iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]:
        policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        docs.append(iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])
                    ["PolicyVersion"]["Document"])
    return [s for d in docs for s in (d["Statement"] if isinstance(d["Statement"], list) else [d["Statement"]])]


def as_list(value):
    return value if isinstance(value, list) else [value]


def grants(statements):
    """{action: [resources]} over Allow statements."""
    out = {}
    for s in statements:
        if s["Effect"] == "Allow":
            for action in as_list(s["Action"]):
                out.setdefault(action, []).extend(as_list(s["Resource"]))
    return out


# ---------------------------------------------------------- network, backends
def test_network_has_subnets_in_three_azs_and_a_private_route_table_each(aws, network):
    ec2 = aws("ec2")
    for key in ("PublicSubnetIds", "PrivateSubnetIds"):
        subnets = ec2.describe_subnets(SubnetIds=network[key].split(","))["Subnets"]
        assert len({s["AvailabilityZone"] for s in subnets}) == 3
        assert all(s["VpcId"] == network["VpcId"] for s in subnets)
    tables = ec2.describe_route_tables(RouteTableIds=network["PrivateRouteTableIds"].split(","))["RouteTables"]
    assert len(tables) == 3 and all(t["VpcId"] == network["VpcId"] for t in tables)
    # (moto keeps CloudFormation's subnet associations out of describe_route_tables)
    for table in tables:
        defaults = [r for r in table["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
        assert [r.get("NatGatewayId", "").startswith("nat-") for r in defaults] == [True]


def test_postgres_ec2_stack_gives_three_backends_on_fixed_enis(aws, network, postgres_ec2, secrets):
    outputs, resources = postgres_ec2
    ec2 = aws("ec2")
    hosts = outputs["BackendHosts"].split(",")
    assert hosts[0] == outputs["PrimaryHost"] and len(set(hosts)) == 3
    enis = ec2.describe_network_interfaces(
        NetworkInterfaceIds=[resources["EniPg%d" % i] for i in range(3)])["NetworkInterfaces"]
    assert sorted(e["PrivateIpAddress"] for e in enis) == sorted(hosts)
    assert {e["SubnetId"] for e in enis} == set(network["PrivateSubnetIds"].split(","))
    instances = [i for r in ec2.describe_instances(InstanceIds=outputs["InstanceIds"].split(","))["Reservations"]
                 for i in r["Instances"]]
    assert sorted(t["Value"] for i in instances for t in i["Tags"] if t["Key"] == "PgNode") == ["pg0", "pg1", "pg2"]
    sg = ec2.describe_security_groups(GroupIds=[outputs["DbSecurityGroupId"]])["SecurityGroups"][0]
    for perm in sg["IpPermissions"]:
        assert (perm["FromPort"], perm["ToPort"]) == (5432, 5432)
        assert all(not policy_rules.is_open_cidr(r["CidrIp"]) for r in perm["IpRanges"])
    role = resources["DbRole"]
    assert grants(policy_documents_of(aws, role)) == {
        "secretsmanager:GetSecretValue": [secrets["AppUserSecretArn"], secrets["ReplicationUserSecretArn"]]}
    user_data = launch_template_user_data(aws, resources["DbLaunchTemplate"])
    assert len(user_data.encode()) < USER_DATA_LIMIT
    assert "pg_basebackup -h \"$PRIMARY\"" in user_data and "PRIMARY='%s'" % hosts[0] in user_data


def test_rds_stack_gives_a_multi_az_writer_and_a_reader(aws, postgres_rds):
    rds = aws("rds")
    primary = rds.describe_db_instances(DBInstanceIdentifier=postgres_rds["DbInstanceIdentifier"])["DBInstances"][0]
    assert primary["MultiAZ"] and primary["StorageEncrypted"] and primary["Engine"] == "postgres"
    assert primary["Endpoint"]["Address"] == postgres_rds["WriterEndpoint"]
    replica_id = primary["ReadReplicaDBInstanceIdentifiers"][0]
    replica = rds.describe_db_instances(DBInstanceIdentifier=replica_id)["DBInstances"][0]
    assert replica["Endpoint"]["Address"] == postgres_rds["ReaderEndpoints"]
    # The parameter group that makes TLS mandatory (moto cannot attach it).
    groups = [g["DBParameterGroupName"] for g in rds.describe_db_parameter_groups()["DBParameterGroups"]
              if g["DBParameterGroupFamily"] == "postgres16"]
    settings = [{p["ParameterName"]: p.get("ParameterValue")
                 for p in rds.describe_db_parameters(DBParameterGroupName=g)["Parameters"]} for g in groups]
    assert {"rds.force_ssl": "1"} in settings


# ------------------------------------------------------------------- cluster
def launch_template_user_data(aws, template_id):
    version = aws("ec2").describe_launch_template_versions(LaunchTemplateId=template_id)["LaunchTemplateVersions"][0]
    return base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cluster_outputs_name_the_resources_moto_made(case, aws, cluster, network):
    mode, via, kind = case
    params, outputs, resources = cluster(case)
    ec2 = aws("ec2")

    ids = outputs["InstanceIds"].split(",")
    instances = {i["InstanceId"]: i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
                 for i in r["Instances"]}
    names = [{t["Key"]: t["Value"] for t in instances[i]["Tags"]}["TidepoolNode"] for i in ids]
    assert names == list(NODES)

    enis = outputs["NetworkInterfaceIds"].split(",")
    described = {e["NetworkInterfaceId"]: e for e in
                 ec2.describe_network_interfaces(NetworkInterfaceIds=enis)["NetworkInterfaces"]}
    assert [described[e]["PrivateIpAddress"] for e in enis] == outputs["NodePrivateIps"].split(",")
    assert [described[e]["SubnetId"] for e in enis] == params["SubnetIds"].split(",")

    fn = aws("lambda").get_function(FunctionName=outputs["FailoverFunctionName"])["Configuration"]
    assert fn["FunctionArn"] == outputs["FailoverFunctionArn"]
    assert (fn["Runtime"], fn["Handler"], fn["Architectures"]) == ("provided.al2023", "bootstrap", ["x86_64"])
    env = {k: str(v) for k, v in fn["Environment"]["Variables"].items()}
    if mode == "eip":
        alloc = outputs["EipAllocationId"]
        address = ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]
        assert outputs["ServiceEndpoint"] == address["PublicIp"]
        assert env == {"TIDEPOOL_MODE": "eip", "TIDEPOOL_EIP_ALLOCATION_ID": alloc}
    elif mode == "route53":
        zone = outputs["HostedZoneId"]
        records = aws("route53").list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
        a = [r for r in records if r["Type"] == "A"]
        assert [(r["Name"], r["TTL"], r["ResourceRecords"]) for r in a] == [
            ("db.tidepool.internal.", 1, [{"Value": outputs["NodePrivateIps"].split(",")[0]}])]
        assert outputs["ServiceEndpoint"] == "db.tidepool.internal"
        assert env == {"TIDEPOOL_MODE": "route53", "TIDEPOOL_HOSTED_ZONE_ID": zone,
                       "TIDEPOOL_RECORD_NAME": "db.tidepool.internal", "TIDEPOOL_RECORD_TTL": "1"}
    else:
        assert outputs["ServiceEndpoint"] == "192.168.100.10"
        assert env == {"TIDEPOOL_MODE": "route_table", "TIDEPOOL_VIP_CIDR": "192.168.100.10/32",
                       "TIDEPOOL_ROUTE_TABLE_IDS": network["PrivateRouteTableIds"]}
    assert aws("logs").describe_log_groups(logGroupNamePrefix=outputs["NodeLogGroupName"])["logGroups"]


@pytest.mark.parametrize("case", CASES[:2], ids=CASE_IDS[:2])
def test_cluster_control_ports_reach_only_peers_and_the_admin_cidr(case, aws, cluster):
    _, outputs, _ = cluster(case)
    own = outputs["NodeSecurityGroupId"]
    sg = aws("ec2").describe_security_groups(GroupIds=[own])["SecurityGroups"][0]
    seen = {}
    for perm in sg["IpPermissions"]:
        key = (perm["IpProtocol"], perm["FromPort"], perm["ToPort"])
        seen[key] = ({g["GroupId"] for g in perm["UserIdGroupPairs"]},
                     sorted(r["CidrIp"] for r in perm["IpRanges"]), perm["Ipv6Ranges"])
    assert seen == {
        ("tcp", 9999, 9999): (set(), sorted(CLIENT_CIDRS.split(",")), []),
        ("tcp", 9000, 9000): ({own}, [], []),
        ("udp", 9694, 9694): ({own}, [], []),
        ("tcp", 9898, 9898): ({own}, [ADMIN_CIDR], []),
    }


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cluster_iam_grants_each_move_only_on_what_it_moves(case, aws, cluster, network, backend_params, aurora):
    mode, via, kind = case
    params, outputs, resources = cluster(case)
    node = policy_documents_of(aws, resources["InstanceRole"])
    function = policy_documents_of(aws, resources["FailoverRole"])

    for statement in node + function:  # the project rule, on the resolved documents
        findings = []
        policy_rules.check_statement("resolved", statement, lambda *f: findings.append(f))
        assert findings == []

    moves = MOVE_ACTIONS[mode] | BACKEND_ACTIONS[kind]
    node_grants, function_grants = grants(node), grants(function)
    assert moves <= set(function_grants)
    if via == "lambda":
        assert not moves & set(node_grants)
        assert node_grants["lambda:InvokeFunction"] == [outputs["FailoverFunctionArn"]]
    else:
        assert moves <= set(node_grants)
        assert "lambda:InvokeFunction" not in node_grants
    # Nothing of another mode.
    for other, actions in MOVE_ACTIONS.items():
        if other != mode:
            assert not actions & (set(node_grants) | set(function_grants)) - moves

    account_region = "arn:aws:ec2:%s:123456789012:" % REGION
    if mode == "eip":
        expected = {account_region + "elastic-ip/" + outputs["EipAllocationId"]}
        expected |= {account_region + "instance/" + i for i in outputs["InstanceIds"].split(",")}
        expected |= {account_region + "network-interface/" + e for e in outputs["NetworkInterfaceIds"].split(",")}
        for action in MOVE_ACTIONS["eip"]:
            assert set(function_grants[action]) == expected
    elif mode == "route53":
        zone_arn = "arn:aws:route53:::hostedzone/" + outputs["HostedZoneId"]
        assert function_grants["route53:ChangeResourceRecordSets"] == [zone_arn]
        upsert = next(s for s in function if s.get("Sid") == "UpsertServiceRecord")
        assert upsert["Condition"] == {"ForAllValues:StringEquals": {
            "route53:ChangeResourceRecordSetsNormalizedRecordNames": ["db.tidepool.internal"],
            "route53:ChangeResourceRecordSetsRecordTypes": ["A"],
            "route53:ChangeResourceRecordSetsActions": ["UPSERT"]}}
        assert function_grants["route53:GetChange"] == ["arn:aws:route53:::change/*"]
    else:
        tables = {account_region + "route-table/" + t for t in network["PrivateRouteTableIds"].split(",")}
        for action in MOVE_ACTIONS["route_table"]:
            assert set(function_grants[action]) == tables
    if kind == "aurora":
        assert function_grants["rds:FailoverDBCluster"] == [aurora["DBClusterArn"]]
        assert function_grants["rds:DescribeDBInstances"] == ["arn:aws:rds:%s:123456789012:db:*" % REGION]
    if kind == "rds":
        primary = aws("rds").describe_db_instances(
            DBInstanceIdentifier=backend_params["rds"]["DbInstanceIdentifier"])["DBInstances"][0]
        assert function_grants["rds:RebootDBInstance"] == [primary["DBInstanceArn"]]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cluster_node_logs_in_to_backends_only_as_its_stack_says(case, aws, cluster, secrets,
                                                                  iam_db_resource_ids):
    """rds-db:connect as the one IAM database user on the named databases,
    only with BackendAuth=rds_iam; secrets and S3 objects exactly those the
    stack names."""
    mode, via, kind = case
    params, outputs, resources = cluster(case)
    login = LOGIN.get(case)
    node = grants(policy_documents_of(aws, resources["InstanceRole"]))
    function = grants(policy_documents_of(aws, resources["FailoverRole"]))

    assert "rds-db:connect" not in function
    if login == "rds_iam":
        assert set(node["rds-db:connect"]) == {
            "arn:aws:rds-db:%s:123456789012:dbuser:%s/app" % (REGION, resource_id)
            for resource_id in iam_db_resource_ids[kind]}
    else:
        assert "rds-db:connect" not in node

    readable = {secrets["WatchdogKeySecretArn"], secrets["AdminTokenSecretArn"]}
    readable |= set(params["UserSecretArns"].split(","))
    if login == "backend_secret":
        readable.add(secrets["AppUserSecretArn"])
    assert set(node["secretsmanager:GetSecretValue"]) == readable

    objects = {"arn:aws:s3:::%s/%s" % (ARTIFACTS, params["ArtifactKey"])}
    if login == "ca_bundle_key":
        objects.add("arn:aws:s3:::%s/%s" % (ARTIFACTS, CA_BUNDLE_KEY))
    assert set(node["s3:GetObject"]) == objects


def render_from_user_data(aws, case, cluster, out_dir, etc, node="tp-b"):
    """Run render-config as the node's user data would: the stack's
    render.env, the node's name, the users from Secrets Manager and the user
    each backend secret is for."""
    params, outputs, resources = cluster(case)
    user_data = launch_template_user_data(aws, resources["NodeLaunchTemplate"])
    block = re.search(r"<<'TIDEPOOL_ENV'\n(.*?)\nTIDEPOOL_ENV\n", user_data, re.S).group(1)
    env = dict(line.split("=", 1) for line in block.splitlines())
    sm = aws("secretsmanager")
    users = [json.loads(sm.get_secret_value(SecretId=arn)["SecretString"])
             for arn in params["UserSecretArns"].split(",")]
    backend_secrets = [{"username": json.loads(sm.get_secret_value(SecretId=arn)["SecretString"])["username"],
                        "arn": arn} for arn in params.get("BackendSecretArns", "").split(",") if arn]
    work = out_dir / "from-stacks"
    work.mkdir(exist_ok=True)
    (work / "users.json").write_text(json.dumps(users))
    (work / "backend-secrets.json").write_text(json.dumps(backend_secrets))
    out = work / ("%s.toml" % "-".join(case))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDEPOOL_")}
    run = subprocess.run(
        [sys.executable, str(RENDERER), "-o", str(out)],
        env=dict(clean, **env, TIDEPOOL_NODE_NAME=node, TIDEPOOL_VPC_CIDRS=VPC_CIDR,
                 TIDEPOOL_USERS_FILE=str(work / "users.json"), TIDEPOOL_ETC=str(etc),
                 TIDEPOOL_BACKEND_SECRETS_FILE=str(work / "backend-secrets.json")),
        capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return user_data, out


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cluster_user_data_renders_the_config_of_its_stack(case, aws, cluster, out_dir, etc, backend_params):
    mode, via, kind = case
    params, outputs, _ = cluster(case)
    user_data, path = render_from_user_data(aws, case, cluster, out_dir, etc)
    assert len(user_data.encode()) < USER_DATA_LIMIT
    cfg = tomllib.loads(path.read_text())

    ips = dict(zip(NODES, outputs["NodePrivateIps"].split(",")))
    assert cfg["watchdog"]["node_name"] == "tp-b"
    assert [(p["name"], p["address"]) for p in cfg["watchdog"]["peers"]] == [
        ("tp-a", ips["tp-a"] + ":9000"), ("tp-c", ips["tp-c"] + ":9000")]
    assert [u["name"] for u in cfg["users"]] == ["app"]

    if kind == "aurora":
        # One cluster whose instances tidepool finds: the cluster endpoint, the
        # instances' endpoints (given, or derived from the cluster endpoint's
        # <cluster>.cluster-<suffix>.<region>...), the identifier to fail over.
        assert "backends" not in cfg
        (c,) = cfg["clusters"]
        endpoint = backend_params["aurora"]["WriterEndpoint"]
        derived = "?." + endpoint.split(".cluster-", 1)[1]
        assert (c["kind"], c["endpoint"], c["port"]) == ("aurora", endpoint, 5432)
        assert c["instance_host_pattern"] == GIVEN_PATTERN.get(case, derived)
        assert c["cluster_identifier"] == backend_params["aurora"]["DbClusterIdentifier"]
        assert (c["writer_weight"], c["reader_weight"]) == (1.0, 1.0)
    else:
        assert "clusters" not in cfg
        backends = [(b["host"], b["flag"]) for b in cfg["backends"]]
        if kind == "ec2":
            assert backends == [(h, "allow_to_failover") for h in backend_params["ec2"]["BackendHosts"].split(",")]
        else:
            assert backends == [(backend_params[kind]["WriterEndpoint"], "always_primary"),
                                (backend_params[kind]["ReaderEndpoints"], "disallow_to_failover")]

    esc = cfg["escalation"]
    assert (esc["via"], esc["mode"]) == (via, mode)
    assert esc.get("lambda_function") == (outputs["FailoverFunctionArn"] if via == "lambda" else None)
    if mode == "eip":
        assert esc["eip_allocation_id"] == outputs["EipAllocationId"]
    elif mode == "route53":
        assert (esc["hosted_zone_id"], esc["record_name"]) == (outputs["HostedZoneId"], "db.tidepool.internal.")
    else:
        assert esc["route_table_ids"] == params["RouteTableIds"].split(",")
        assert esc["vip_cidr"] == "192.168.100.10/32"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cluster_nodes_verify_managed_backends_and_log_in_as_the_stack_says(case, aws, cluster, out_dir,
                                                                            etc, secrets):
    mode, via, kind = case
    params, _, _ = cluster(case)
    login = LOGIN.get(case)
    user_data, path = render_from_user_data(aws, case, cluster, out_dir, etc)
    cfg = tomllib.loads(path.read_text())
    defaults = cfg["backend_defaults"]

    # Where the boot fetches the CA bundle that verify-full checks against.
    if kind == "ec2":
        assert "ca_from=''" in user_data
        assert defaults["sslmode"] == "prefer" and "sslrootcert" not in defaults
    else:
        source = "s3://%s/%s" % (ARTIFACTS, CA_BUNDLE_KEY) if login == "ca_bundle_key" else RDS_BUNDLE
        assert "ca_from='%s'" % source in user_data
        assert (defaults["sslmode"], defaults["sslrootcert"]) == ("verify-full", str(etc / "backend-ca.pem"))
        assert "-o /etc/tidepool/backend-ca.pem" in user_data and "--proto =https" in user_data

    if login == "rds_iam":
        assert (defaults["auth"], defaults["region"]) == ("rds_iam", REGION)
        assert [u["name"] for u in cfg["users"]] == [params["IamDbUser"]]
    else:
        assert defaults["auth"] == "password" and "region" not in defaults
    user = cfg["users"][0]
    if login == "backend_secret":
        # Clients keep their own password; tidepool reads the backend one.
        assert user["password"] == "app-client-password-1"
        assert user["password_secret"] == secrets["AppUserSecretArn"]
        assert cfg["health_check"]["user"] == "app" and "password" not in cfg["health_check"]
    else:
        assert "password_secret" not in user


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tidepool_check_config_accepts_the_config_of_each_stack(case, aws, cluster, out_dir, etc):
    tidepool = os.environ.get("TIDEPOOL_BIN")
    if not tidepool:
        pytest.skip("SKIPPED check-config (TIDEPOOL_BIN unset)")
    _, path = render_from_user_data(aws, case, cluster, out_dir, etc)
    run = subprocess.run([tidepool, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
