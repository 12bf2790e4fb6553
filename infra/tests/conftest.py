"""Shared fixtures for infra/tests: template paths, the slow linters (started
once, in the background, when the session starts), a moto server on a free
loopback port, and the output directory for rendered configs."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

import policy_rules

INFRA = pathlib.Path(__file__).resolve().parent.parent
TEMPLATES = sorted((INFRA / "cloudformation").glob("*.yaml"))
BAD_TEMPLATES = sorted((INFRA / "tests" / "bad").glob("*.yaml"))
RENDERER = INFRA / "scripts" / "render-config"
CHECKOV_CONFIG = INFRA / "tests" / "checkov.yaml"

_background = {}


def _tool(name):
    """A tool from the interpreter's own environment first (the test venv)."""
    local = pathlib.Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _out_dir():
    path = os.environ.get("INFRA_TEST_OUT")
    if not path:
        path = tempfile.mkdtemp(prefix="tidepool-infra-")
        os.environ["INFRA_TEST_OUT"] = path
    pathlib.Path(path).mkdir(parents=True, exist_ok=True)
    return pathlib.Path(path)


def pytest_sessionstart(session):
    """cfn-lint and checkov each run once over everything, beside the tests."""
    out = _out_dir()
    _background["cfn-lint"] = subprocess.Popen(
        [_tool("cfn-lint"), "--format", "parseable", *map(str, TEMPLATES)],
        stdout=open(out / "cfn-lint.txt", "w"), stderr=subprocess.STDOUT)
    # One checkov run over infra/: the real templates must pass, the bad ones
    # show which of their faults checkov catches. --skip-download: offline.
    # "-d ." from infra/: checkov puts the scanned path into each resource
    # (__file__), and CKV_AWS_45 has mistaken some absolute paths for secrets.
    _background["checkov"] = subprocess.Popen(
        [_tool("checkov"), "-d", ".", "--config-file", str(CHECKOV_CONFIG),
         "--skip-download", "--quiet", "-o", "json"],
        stdout=open(out / "checkov.json", "w"), stderr=open(out / "checkov.log", "w"),
        cwd=str(INFRA), env=dict(os.environ, BC_SKIP_MAPPING="TRUE"))


def _finish(name, timeout=600):
    proc = _background[name]
    proc.wait(timeout=timeout)
    return proc.returncode


@pytest.fixture(scope="session")
def out_dir():
    return _out_dir()


@pytest.fixture(scope="session")
def cfn_lint_report(out_dir):
    """{template path: [finding lines]} from the one cfn-lint run."""
    rc = _finish("cfn-lint")
    text = (out_dir / "cfn-lint.txt").read_text()
    by_file = {str(t): [] for t in TEMPLATES}
    stray = []
    for line in text.splitlines():
        path = line.split(":", 1)[0]
        (by_file[path] if path in by_file else stray).append(line)
    if stray or (rc != 0 and not any(by_file.values())):
        pytest.fail("cfn-lint (exit %d) said:\n%s" % (rc, text))
    return by_file


@pytest.fixture(scope="session")
def checkov_report(out_dir):
    """checkov's failed checks as (template path, check id, resource)."""
    _finish("checkov")
    text = (out_dir / "checkov.json").read_text()
    try:
        data = json.loads(text)
    except ValueError:
        pytest.fail("checkov gave no JSON report; see %s/checkov.log:\n%s"
                    % (out_dir, (out_dir / "checkov.log").read_text()[-2000:]))
    reports = data if isinstance(data, list) else [data]
    # Every resource of every template was scanned (a template checkov cannot
    # read would otherwise pass unnoticed).
    expected = sum(len(policy_rules.load_template(t)["Resources"]) for t in TEMPLATES + BAD_TEMPLATES)
    scanned = sum(r.get("summary", {}).get("resource_count", 0) for r in reports)
    assert scanned >= expected, "checkov scanned %d resources, the templates have %d" % (scanned, expected)
    failed = []
    for report in reports:
        assert report.get("summary", {}).get("parsing_errors", 0) == 0, report["summary"]
        for check in report.get("results", {}).get("failed_checks", []):
            path = (INFRA / check["file_path"].lstrip("/")).resolve()
            failed.append((str(path), check["check_id"], check["resource"]))
    return failed


@pytest.fixture(scope="session")
def etc(out_dir):
    """Stand-ins for the files user data writes from Secrets Manager."""
    path = out_dir / "etc"
    path.mkdir(exist_ok=True)
    (path / "admin.token").write_text("admin-token-for-tests\n")
    (path / "watchdog.key").write_text("watchdog-key-for-tests\n")
    (path / "users.json").write_text(json.dumps([
        {"username": "app", "password": "app-pass\"with'quotes"},
        {"username": "report", "password": "report-pass"}]))
    # Stand-in for the RDS CA bundle the boot downloads (check-config reads
    # sslrootcert): a throwaway CA certificate.
    bundle = path / "backend-ca.pem"
    if not bundle.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=stand-in RDS CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-keyout", str(path / "backend-ca.key"), "-out", str(bundle)],
            check=True, capture_output=True)
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(out_dir):
    """A moto server on 127.0.0.1:<free port>, stopped when the session ends."""
    port = _free_port()
    log = open(out_dir / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/data.json", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto server did not start; see %s/moto.log" % out_dir)
            time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def pytest_sessionfinish(session, exitstatus):
    for proc in _background.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    counts_file = os.environ.get("INFRA_COUNTS_FILE")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if counts_file and reporter is not None:
        stats = reporter.stats
        passed = len([r for r in stats.get("passed", []) if r.when == "call"])
        failed = len(stats.get("failed", [])) + len(stats.get("error", []))
        skipped = len(stats.get("skipped", []))
        pathlib.Path(counts_file).write_text("%d %d %d\n" % (passed, failed, skipped))
