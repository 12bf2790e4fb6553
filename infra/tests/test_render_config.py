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
    "aurora": {"TIDEPOOL_WRITER_ENDPOINT": "tp.cluster-abc123.eu-west-1.rds.amazonaws.com",
               "TIDEPOOL_READER_ENDPOINTS": "tp.cluster-ro-abc123.eu-west-1.rds.amazonaws.com"},
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
