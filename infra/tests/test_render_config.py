"""The config renderer the nodes run at boot: one file per address mode and
backend kind, saved under the run's output directory, checked key by key and,
when TIDEPOOL_BIN names a tidepool binary, by `tidepool check-config`."""
import ast
import itertools
import json
import os
import subprocess
import sys
import tomllib

import pytest

import policy_rules
from conftest import INFRA, RENDERER

MODES = ("eip", "route53", "route_table")
KINDS = ("ec2", "rds", "aurora")
NODES = "tp-a=10.0.1.10,tp-b=10.0.2.10,tp-c=10.0.3.10"
FUNCTION = "arn:aws:lambda:eu-west-1:123456789012:function:tidepool-failover"

BACKENDS = {
    "ec2": {"TIDEPOOL_BACKEND_HOSTS": "10.0.4.20,10.0.5.20,10.0.6.20"},
    "rds": {"TIDEPOOL_WRITER_ENDPOINT": "tp-primary.abc123.eu-west-1.rds.amazonaws.com",
            "TIDEPOOL_READER_ENDPOINTS": "tp-replica.abc123.eu-west-1.rds.amazonaws.com",
            "TIDEPOOL_STANDBY_WEIGHT": "2"},
    # Readers come from the cluster's topology; the instances' endpoints from
    # the cluster endpoint's name.
    "aurora": {"TIDEPOOL_WRITER_ENDPOINT": "tp.cluster-abc123.eu-west-1.rds.amazonaws.com"},
}
ADDRESSES = {
    "eip": {"TIDEPOOL_EIP_ALLOCATION_ID": "eipalloc-0123456789abcdef0"},
    "route53": {"TIDEPOOL_HOSTED_ZONE_ID": "Z0123456789ABCDEFGHIJ",
                "TIDEPOOL_RECORD_NAME": "db.tidepool.internal", "TIDEPOOL_RECORD_TTL": "1"},
    "route_table": {"TIDEPOOL_ROUTE_TABLE_IDS": "rtb-0aaa,rtb-0bbb,rtb-0ccc",
                    "TIDEPOOL_VIP_CIDR": "192.168.100.10/32", "TIDEPOOL_VPC_CIDRS": "10.0.0.0/16"},
}


def render(env, etc, out=None, node="tp-b"):
    full = {"TIDEPOOL_NODE_NAME": node, "TIDEPOOL_NODES": NODES,
            "TIDEPOOL_USERS_FILE": str(etc / "users.json"), "TIDEPOOL_ETC": str(etc)}
    full.update(env)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDEPOOL_")}
    args = [sys.executable, str(RENDERER)] + (["-o", str(out)] if out else [])
    return subprocess.run(args, env=dict(clean, **full), capture_output=True, text=True)


def combo_env(mode, kind, via):
    env = {"TIDEPOOL_MODE": mode, "TIDEPOOL_BACKEND_KIND": kind, "TIDEPOOL_ESCALATION_VIA": via}
    env.update(BACKENDS[kind])
    env.update(ADDRESSES[mode])
    if via == "lambda":
        env["TIDEPOOL_LAMBDA_FUNCTION"] = FUNCTION
    return env


COMBOS = [(m, k, "lambda" if i % 2 else "in_process")
          for i, (m, k) in enumerate(itertools.product(MODES, KINDS))]


def rendered_path(out_dir, mode, kind, via):
    return out_dir / "render" / ("%s-%s-%s.toml" % (mode, kind, via))


@pytest.fixture(scope="session")
def rendered(out_dir, etc):
    """Every combination rendered once into <out>/render/."""
    (out_dir / "render").mkdir(exist_ok=True)
    files = {}
    for mode, kind, via in COMBOS:
        path = rendered_path(out_dir, mode, kind, via)
        run = render(combo_env(mode, kind, via), etc, out=path)
        assert run.returncode == 0, run.stderr
        files[(mode, kind, via)] = path
    return files


@pytest.mark.parametrize("mode,kind,via", COMBOS)
def test_renders_mode_and_backend_kind(mode, kind, via, rendered, etc):
    path = rendered[(mode, kind, via)]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    cfg = tomllib.loads(path.read_text())

    assert cfg["server"] == {"listen": "0.0.0.0:9999", "admin_listen": "0.0.0.0:9898",
                             "admin_token_file": str(etc / "admin.token")}
    assert cfg["pool"]["mode"] == "transaction"
    assert [u["name"] for u in cfg["users"]] == ["app", "report"]
    assert cfg["users"][0]["password"] == "app-pass\"with'quotes"

    # TLS toward the backends: managed ones are verified against the RDS
    # bundle the boot fetches; self-managed ones get libpq's default.
    if kind == "ec2":
        assert cfg["backend_defaults"] == {"sslmode": "prefer", "auth": "password"}
    else:
        assert cfg["backend_defaults"] == {"sslmode": "verify-full", "auth": "password",
                                           "sslrootcert": str(etc / "backend-ca.pem")}
    assert all("password_secret" not in u for u in cfg["users"])

    if kind == "aurora":
        # tidepool finds the instances from the topology: a cluster, no backends.
        assert "backends" not in cfg
        assert cfg["clusters"] == [{
            "name": "aurora", "kind": "aurora",
            "endpoint": "tp.cluster-abc123.eu-west-1.rds.amazonaws.com", "port": 5432,
            "instance_host_pattern": "?.abc123.eu-west-1.rds.amazonaws.com",
            "reader_weight": 1.0, "writer_weight": 1.0}]
    else:
        assert "clusters" not in cfg
        backends = cfg["backends"]
        if kind == "ec2":
            assert [b["host"] for b in backends] == BACKENDS["ec2"]["TIDEPOOL_BACKEND_HOSTS"].split(",")
            assert {b["flag"] for b in backends} == {"allow_to_failover"}
        else:
            writer, reader = backends
            assert (writer["host"], writer["flag"]) == (BACKENDS[kind]["TIDEPOOL_WRITER_ENDPOINT"], "always_primary")
            assert (reader["host"], reader["flag"]) == (BACKENDS[kind]["TIDEPOOL_READER_ENDPOINTS"], "disallow_to_failover")
            assert reader["weight"] == float(BACKENDS[kind].get("TIDEPOOL_STANDBY_WEIGHT", 1))
        assert all(b["port"] == 5432 for b in backends)

    wd = cfg["watchdog"]
    assert (wd["node_name"], wd["listen"], wd["heartbeat_listen"]) == ("tp-b", "0.0.0.0:9000", "0.0.0.0:9694")
    assert wd["shared_key_file"] == str(etc / "watchdog.key")
    assert [(p["name"], p["address"], p["heartbeat"]) for p in wd["peers"]] == [
        ("tp-a", "10.0.1.10:9000", "10.0.1.10:9694"), ("tp-c", "10.0.3.10:9000", "10.0.3.10:9694")]

    esc = cfg["escalation"]
    assert (esc["via"], esc["mode"]) == (via, mode)
    assert ("lambda_function" in esc) == (via == "lambda")
    mode_keys = {"eip": {"eip_allocation_id"},
                 "route53": {"hosted_zone_id", "record_name", "record_ttl"},
                 "route_table": {"route_table_ids", "vip_cidr"}}[mode]
    assert set(esc) - {"via", "mode", "lambda_function"} == mode_keys
    if mode == "route53":
        assert (esc["record_name"], esc["record_ttl"]) == ("db.tidepool.internal.", 1)
    if mode == "route_table":
        assert esc["route_table_ids"] == ["rtb-0aaa", "rtb-0bbb", "rtb-0ccc"]


def test_priorities_prefer_the_first_node(etc):
    env = combo_env("eip", "ec2", "in_process")
    prio = {n: tomllib.loads(render(env, etc, node=n).stdout)["watchdog"]["priority"]
            for n in ("tp-a", "tp-b", "tp-c")}
    assert prio == {"tp-a": 3, "tp-b": 2, "tp-c": 1}


def test_reports_every_missing_setting_at_once(etc):
    run = render({"TIDEPOOL_MODE": "route53", "TIDEPOOL_BACKEND_KIND": "aurora",
                  "TIDEPOOL_ESCALATION_VIA": "lambda"}, etc)
    assert run.returncode == 2
    for key in ("TIDEPOOL_WRITER_ENDPOINT", "TIDEPOOL_HOSTED_ZONE_ID",
                "TIDEPOOL_RECORD_NAME", "TIDEPOOL_LAMBDA_FUNCTION"):
        assert key in run.stderr
    assert run.stdout == ""


@pytest.mark.parametrize("env,message", [
    ({"TIDEPOOL_VIP_CIDR": "10.0.7.7/32"}, "inside the VPC CIDR"),
    ({"TIDEPOOL_VIP_CIDR": "192.168.100.0/24"}, "use a /32"),
    ({"TIDEPOOL_MODE": "vip"}, "expected one of eip, route53, route_table"),
    ({"TIDEPOOL_BACKEND_KIND": "docdb"}, "expected one of ec2, rds, aurora"),
    ({"TIDEPOOL_NODE_NAME": "tp-z"}, "is not in TIDEPOOL_NODES"),
    ({"TIDEPOOL_ROUTE_TABLE_IDS": "main"}, "rtb-"),
    ({"TIDEPOOL_ROUTE_TABLE_IDS": "rtb-1,rtb-2,rtb-3,rtb-4,rtb-5"}, "at most 4 route tables"),
    ({"TIDEPOOL_BACKEND_SSLMODE": "verify"}, "expected one of disable, prefer, require, verify-ca, verify-full"),
    ({"TIDEPOOL_BACKEND_AUTH": "iam"}, "expected one of password, rds_iam"),
])
def test_rejects_wrong_settings(env, message, etc):
    full = combo_env("route_table", "ec2", "in_process")
    full.update(env)
    run = render(full, etc, node=env.get("TIDEPOOL_NODE_NAME", "tp-b"))
    assert run.returncode == 2 and message in run.stderr, run.stderr


def test_env_file_is_read_and_the_environment_wins(tmp_path, etc):
    env = combo_env("eip", "rds", "in_process")
    env_file = tmp_path / "render.env"
    env_file.write_text("".join("%s=%s\n" % kv for kv in env.items()))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDEPOOL_")}
    run = subprocess.run(
        [sys.executable, str(RENDERER), "--env-file", str(env_file)],
        env=dict(clean, TIDEPOOL_NODE_NAME="tp-c", TIDEPOOL_NODES=NODES, TIDEPOOL_POOL_MODE="session",
                 TIDEPOOL_USERS_FILE=str(etc / "users.json")),
        capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    cfg = tomllib.loads(run.stdout)
    assert (cfg["pool"]["mode"], cfg["watchdog"]["node_name"]) == ("session", "tp-c")
    assert cfg["escalation"]["eip_allocation_id"] == "eipalloc-0123456789abcdef0"


def test_runs_on_the_python_of_amazon_linux_2023():
    """AL2023 ships Python 3.9: no 3.10+ syntax, standard library only."""
    source = RENDERER.read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names)
    assert "tomllib" not in imported


def test_cluster_template_embeds_the_renderer_verbatim():
    template = policy_rules.load_template(INFRA / "cloudformation" / "tidepool-cluster.yaml")
    files = template["Resources"]["NodeLaunchTemplate"]["Metadata"]["AWS::CloudFormation::Init"]["config"]["files"]
    embedded = files["/usr/local/libexec/tidepool/render-config"]["content"]
    assert embedded == RENDERER.read_text(), "run infra/scripts/embed-renderer"
    check = subprocess.run([sys.executable, str(INFRA / "scripts" / "embed-renderer"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


@pytest.mark.parametrize("mode,kind,via", COMBOS)
def test_tidepool_check_config_accepts_rendered(mode, kind, via, rendered):
    tidepool = os.environ.get("TIDEPOOL_BIN")
    if not tidepool:
        pytest.skip("SKIPPED check-config (TIDEPOOL_BIN unset)")
    run = subprocess.run([tidepool, "check-config", "-c", str(rendered[(mode, kind, via)])],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# ------------------------------------------------------------ Aurora cluster
def aurora_env(**env):
    full = combo_env("eip", "aurora", "in_process")
    full.update({"TIDEPOOL_" + k: v for k, v in env.items()})
    return full


def rendered_cluster(env, etc):
    run = render(env, etc)
    assert run.returncode == 0, run.stderr
    cfg = tomllib.loads(run.stdout)
    assert "backends" not in cfg
    (cluster,) = cfg["clusters"]
    return cluster


@pytest.mark.parametrize("endpoint,pattern", [
    ("tp.cluster-abc123.eu-west-1.rds.amazonaws.com", "?.abc123.eu-west-1.rds.amazonaws.com"),
    ("orders-db.cluster-c9akciq32xyz.us-gov-west-1.rds.amazonaws.com",
     "?.c9akciq32xyz.us-gov-west-1.rds.amazonaws.com"),
    ("tp.cluster-abc123.cn-north-1.rds.amazonaws.com.cn", "?.abc123.cn-north-1.rds.amazonaws.com.cn"),
])
def test_aurora_instance_host_pattern_is_derived_from_the_cluster_endpoint(endpoint, pattern, etc):
    cluster = rendered_cluster(aurora_env(WRITER_ENDPOINT=endpoint), etc)
    assert (cluster["endpoint"], cluster["instance_host_pattern"]) == (endpoint, pattern)


def test_aurora_instance_host_pattern_given_wins(etc):
    """A DNS name of your own in front of the cluster endpoint: the pattern
    cannot be derived from it, so it is given."""
    cluster = rendered_cluster(aurora_env(WRITER_ENDPOINT="orders-db.example.internal",
                                          INSTANCE_HOST_PATTERN="?.abc123.eu-west-1.rds.amazonaws.com"), etc)
    assert (cluster["endpoint"], cluster["instance_host_pattern"]) == (
        "orders-db.example.internal", "?.abc123.eu-west-1.rds.amazonaws.com")
    # Also beside a cluster endpoint it could be derived from.
    cluster = rendered_cluster(aurora_env(INSTANCE_HOST_PATTERN="?.other.eu-west-1.rds.amazonaws.com"), etc)
    assert cluster["instance_host_pattern"] == "?.other.eu-west-1.rds.amazonaws.com"


@pytest.mark.parametrize("env,message", [
    ({"WRITER_ENDPOINT": "orders-db.example.internal"},
     "cannot be derived from it: set TIDEPOOL_INSTANCE_HOST_PATTERN"),
    ({"WRITER_ENDPOINT": "tp-writer.abc123.eu-west-1.rds.amazonaws.com"},
     "is not an Aurora cluster endpoint"),
    ({"WRITER_ENDPOINT": "tp.cluster-ro-abc123.eu-west-1.rds.amazonaws.com"},
     "a reader or custom endpoint; give the cluster (writer) endpoint"),
    ({"INSTANCE_HOST_PATTERN": "abc123.eu-west-1.rds.amazonaws.com"}, "needs exactly one ?"),
    ({"INSTANCE_HOST_PATTERN": "?.?.eu-west-1.rds.amazonaws.com"}, "needs exactly one ?"),
    ({"READER_ENDPOINTS": "tp.cluster-ro-abc123.eu-west-1.rds.amazonaws.com"},
     "Aurora readers are found from the cluster's topology; leave ReaderEndpoints empty"),
])
def test_aurora_refuses_what_would_not_find_its_instances(env, message, etc):
    run = render(aurora_env(**env), etc)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert run.stdout == ""


def test_aurora_cluster_identifier_and_weights_come_from_the_stack(etc):
    cluster = rendered_cluster(aurora_env(DB_CLUSTER_IDENTIFIER="tp-aurora", PRIMARY_WEIGHT="0",
                                          STANDBY_WEIGHT="2.5", BACKEND_PORT="6543"), etc)
    assert cluster == {
        "name": "aurora", "kind": "aurora",
        "endpoint": "tp.cluster-abc123.eu-west-1.rds.amazonaws.com", "port": 6543,
        "instance_host_pattern": "?.abc123.eu-west-1.rds.amazonaws.com",
        "cluster_identifier": "tp-aurora", "reader_weight": 2.5, "writer_weight": 0.0}
    # Empty (the stack's default) is no identifier.
    assert "cluster_identifier" not in rendered_cluster(aurora_env(DB_CLUSTER_IDENTIFIER=""), etc)


@pytest.mark.parametrize("kind", ["ec2", "rds"])
def test_aurora_settings_leave_other_backend_kinds_alone(kind, etc):
    env = combo_env("eip", kind, "in_process")
    env.update({"TIDEPOOL_INSTANCE_HOST_PATTERN": "?.abc123.eu-west-1.rds.amazonaws.com",
                "TIDEPOOL_DB_CLUSTER_IDENTIFIER": "tp-aurora"})
    run = render(env, etc)
    assert run.returncode == 0, run.stderr
    assert run.stdout == render(combo_env("eip", kind, "in_process"), etc).stdout


def test_tidepool_check_config_accepts_an_aurora_cluster_with_every_setting(tmp_path, etc):
    tidepool = os.environ.get("TIDEPOOL_BIN")
    if not tidepool:
        pytest.skip("SKIPPED check-config (TIDEPOOL_BIN unset)")
    path = tmp_path / "aurora.toml"
    env = iam_env(tmp_path)  # logging in with IAM tokens, over verified TLS
    env.update({"TIDEPOOL_WRITER_ENDPOINT": "orders-db.example.internal",
                "TIDEPOOL_INSTANCE_HOST_PATTERN": "?.abc123.eu-west-1.rds.amazonaws.com",
                "TIDEPOOL_DB_CLUSTER_IDENTIFIER": "tp-aurora", "TIDEPOOL_PRIMARY_WEIGHT": "0",
                "TIDEPOOL_STANDBY_WEIGHT": "2"})
    run = render(env, etc, out=path)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([tidepool, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# ------------------------------------------------------------ backend login
def single_user(tmp_path, name="app"):
    path = tmp_path / "one-user.json"
    path.write_text(json.dumps({"username": name, "password": "pw"}))
    return str(path)


def iam_env(tmp_path, kind="aurora"):
    env = combo_env("route53", kind, "lambda")
    env.update({"TIDEPOOL_BACKEND_AUTH": "rds_iam", "TIDEPOOL_IAM_DB_USER": "app",
                "TIDEPOOL_AWS_REGION": "eu-west-1", "TIDEPOOL_USERS_FILE": single_user(tmp_path)})
    return env


@pytest.mark.parametrize("kind", ["rds", "aurora"])
def test_rds_iam_logs_in_with_tokens_over_verified_tls(kind, tmp_path, etc):
    run = render(iam_env(tmp_path, kind), etc)
    assert run.returncode == 0, run.stderr
    assert tomllib.loads(run.stdout)["backend_defaults"] == {
        "sslmode": "verify-full", "sslrootcert": str(etc / "backend-ca.pem"),
        "auth": "rds_iam", "region": "eu-west-1"}


@pytest.mark.parametrize("env,message", [
    ({"TIDEPOOL_BACKEND_KIND": "ec2", "TIDEPOOL_BACKEND_HOSTS": "10.0.4.20"},
     "rds_iam needs TIDEPOOL_BACKEND_KIND rds or aurora"),
    ({"TIDEPOOL_BACKEND_SSLMODE": "prefer"}, "TIDEPOOL_BACKEND_SSLMODE must be verify-full"),
    ({"TIDEPOOL_BACKEND_SSLMODE": "disable"}, "TIDEPOOL_BACKEND_SSLMODE must be verify-full"),
    ({"TIDEPOOL_IAM_DB_USER": ""}, "TIDEPOOL_IAM_DB_USER is required"),
    ({"TIDEPOOL_IAM_DB_USER": "tidepool"}, "connect as that user only, so 'app' could not log in"),
])
def test_rds_iam_refuses_what_the_token_or_the_grant_would_not_cover(env, message, tmp_path, etc):
    full = iam_env(tmp_path)
    full.update(env)
    run = render(full, etc)
    assert run.returncode == 2 and message in run.stderr, run.stderr


def test_rds_iam_refuses_a_second_user(tmp_path, etc):
    """The stack grants rds-db:connect as one database user: a second user in
    the users file could never log in."""
    env = iam_env(tmp_path)
    env["TIDEPOOL_USERS_FILE"] = str(etc / "users.json")
    run = render(env, etc)
    assert run.returncode == 2 and "'report' could not log in" in run.stderr, run.stderr


SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:tp/app-user-AbCdEf"


def backend_secrets(tmp_path, entries):
    path = tmp_path / "backend-secrets.json"
    path.write_text(json.dumps(entries))
    return {"TIDEPOOL_BACKEND_SECRETS_FILE": str(path)}


def test_backend_secret_becomes_the_users_password_secret(tmp_path, etc):
    env = combo_env("eip", "rds", "in_process")
    env.update(backend_secrets(tmp_path, [{"username": "report", "arn": SECRET}]))
    run = render(env, etc)
    assert run.returncode == 0, run.stderr
    cfg = tomllib.loads(run.stdout)
    users = {u["name"]: u for u in cfg["users"]}
    assert users["report"] == {"name": "report", "password": "report-pass", "password_secret": SECRET}
    assert "password_secret" not in users["app"]
    # The health check's user (the first) has no secret: its password stays.
    assert cfg["health_check"]["password"] == "app-pass\"with'quotes"


def test_health_check_takes_no_stale_password_when_its_user_has_a_secret(tmp_path, etc):
    env = combo_env("eip", "aurora", "in_process")
    env.update(backend_secrets(tmp_path, [{"username": "app", "arn": SECRET}]))
    run = render(env, etc)
    assert run.returncode == 0, run.stderr
    cfg = tomllib.loads(run.stdout)
    assert cfg["health_check"]["user"] == "app" and "password" not in cfg["health_check"]
    assert cfg["health_check"]["password_secret"] == SECRET
    assert cfg["users"][0]["password_secret"] == SECRET


@pytest.mark.parametrize("entries,message", [
    ([{"username": "nobody", "arn": SECRET}], "user 'nobody', who is not in TIDEPOOL_USERS_FILE"),
    ([{"username": "app", "arn": "arn:aws:ssm:eu-west-1:123456789012:parameter/x"}],
     "is not a Secrets Manager ARN"),
    ([{"username": "app", "arn": SECRET}, {"username": "app", "arn": SECRET + "2"}],
     "two secrets for user 'app'"),
    ([{"arn": SECRET}], "every entry needs username and arn"),
])
def test_backend_secrets_must_name_known_users(entries, message, tmp_path, etc):
    env = combo_env("eip", "rds", "in_process")
    env.update(backend_secrets(tmp_path, entries))
    run = render(env, etc)
    assert run.returncode == 2 and message in run.stderr, run.stderr


def test_backend_secrets_are_refused_with_rds_iam(tmp_path, etc):
    env = iam_env(tmp_path)
    env.update(backend_secrets(tmp_path, [{"username": "app", "arn": SECRET}]))
    run = render(env, etc)
    assert run.returncode == 2 and "rds_iam logs in with IAM tokens" in run.stderr, run.stderr


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_self_managed_backends_may_be_verified_against_a_given_ca(mode, etc):
    env = combo_env("eip", "ec2", "in_process")
    env.update({"TIDEPOOL_BACKEND_SSLMODE": mode, "TIDEPOOL_BACKEND_SSLROOTCERT": "/etc/pki/our-ca.pem"})
    run = render(env, etc)
    assert run.returncode == 0, run.stderr
    assert tomllib.loads(run.stdout)["backend_defaults"] == {
        "sslmode": mode, "sslrootcert": "/etc/pki/our-ca.pem", "auth": "password"}


def test_query_cache_servers_become_a_shared_memcached_store(etc):
    env = combo_env("eip", "aurora", "in_process")
    env["TIDEPOOL_QUERY_CACHE_SERVERS"] = "tp-cache.abc.cfg.use1.cache.amazonaws.com:11211"
    run = render(env, etc)
    assert run.returncode == 0, run.stderr
    cfg = tomllib.loads(run.stdout)
    assert cfg["query_cache"] == {
        "enabled": True,
        "store": "memcached",
        "memcached_servers": ["tp-cache.abc.cfg.use1.cache.amazonaws.com:11211"],
    }
    # Without servers, no cache.
    env["TIDEPOOL_QUERY_CACHE_SERVERS"] = ""
    assert "query_cache" not in tomllib.loads(render(env, etc).stdout)
    env["TIDEPOOL_QUERY_CACHE_SERVERS"] = "no-port"
    run = render(env, etc)
    assert run.returncode != 0 and "is not host:port" in run.stderr
