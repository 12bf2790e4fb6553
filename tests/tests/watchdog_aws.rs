//! The watchdog with the AWS address modes, in-process, against moto: the
//! Elastic IP, the Route53 record and the VIP's route follow the leader
//! when the leader is killed. Each node reads its identity from its own
//! IMDSv2 endpoint run by the test.

mod watchdog_common;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::Value;
use tidepool_tests::{NetNs, moto::Moto};
use watchdog_common::*;

/// Runs `body` (Python, with `ec2` and `r53` boto3 clients on moto) and
/// parses its last printed line as JSON.
fn py(moto: &Moto, body: &str) -> Result<Value> {
    let line = moto.python(&format!(
        "ec2 = boto3.client('ec2', **kw)\nr53 = boto3.client('route53', **kw)\n{body}"
    ))?;
    Ok(serde_json::from_str(if line.is_empty() {
        "null"
    } else {
        &line
    })?)
}

/// What the address points at now (ids and addresses), per mode.
fn holder(moto: &Moto, mode: &str, world: &Value) -> Result<Vec<String>> {
    let body = match mode {
        "eip" => format!(
            "a = ec2.describe_addresses(AllocationIds=['{}'])['Addresses'][0]\n\
             print(json.dumps([a.get('InstanceId') or None, a.get('NetworkInterfaceId') or None]))",
            world["alloc"].as_str().unwrap_or_default()
        ),
        "route53" => format!(
            "rs = r53.list_resource_record_sets(HostedZoneId='{}')['ResourceRecordSets']\n\
             print(json.dumps([v['Value'] for r in rs if r['Name'] == 'db.tidepool.internal.' \
             and r['Type'] == 'A' for v in r['ResourceRecords']]))",
            world["zone"].as_str().unwrap_or_default()
        ),
        _ => format!(
            "t = ec2.describe_route_tables(RouteTableIds=['{}'])['RouteTables'][0]\n\
             print(json.dumps([x for r in t['Routes'] if r.get('DestinationCidrBlock') == '192.168.255.10/32' \
             for x in (r.get('InstanceId'), r.get('NetworkInterfaceId')) if x]))",
            world["rtb"].as_str().unwrap_or_default()
        ),
    };
    let v = py(moto, &body)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect())
}

/// A minimal IMDSv2 endpoint: PUT /latest/api/token, then GETs of
/// `/latest/meta-data/…` from `values`.
fn imds(host: Ipv4Addr, values: HashMap<String, String>) -> Result<SocketAddr> {
    let listener = TcpListener::bind((host, 0))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let values = values.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    // Skip headers.
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    let key = path.trim_start_matches("/latest/meta-data/");
                    let (status, body) = match (method, path) {
                        ("PUT", "/latest/api/token") => ("200 OK", "test-token".to_string()),
                        (_, _) => match values.get(key) {
                            Some(v) => ("200 OK", v.clone()),
                            None => ("404 Not Found", String::new()),
                        },
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n{body}",
                        body.len()
                    );
                    if reader.get_mut().write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// The AWS Lambda `Invoke` API for one function: each invocation runs the
/// real failover function once (`tidepool-failover-lambda --event -`,
/// with `env`) and answers with what it printed, as Lambda would. moto
/// cannot run functions here (it needs Docker), so this endpoint stands in
/// for the Lambda service only; the function's moves go to moto.
struct LambdaEndpoint {
    addr: SocketAddr,
    /// (function name, action) of every invocation.
    calls: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// What the function printed (answer and errors), last invocations.
    answers: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LambdaEndpoint {
    fn start(host: Ipv4Addr, env: Vec<(String, String)>) -> Result<LambdaEndpoint> {
        let bin = tidepool_tests::target_dir().join("tidepool-failover-lambda");
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: cargo build --workspace",
            bin.display()
        );
        let listener = TcpListener::bind((host, 0))?;
        let addr = listener.local_addr()?;
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (seen, said) = (calls.clone(), answers.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (bin, env, seen, said) = (bin.clone(), env.clone(), seen.clone(), said.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve_invocations(stream, &bin, &env, &seen, &said) {
                        said.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("endpoint error: {e:#}"));
                    }
                });
            }
        });
        Ok(LambdaEndpoint {
            addr,
            calls,
            answers,
        })
    }

    fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn answers(&self) -> Vec<String> {
        let a = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        a[a.len().saturating_sub(4)..].to_vec()
    }
}

fn serve_invocations(
    stream: std::net::TcpStream,
    bin: &std::path::Path,
    env: &[(String, String)],
    seen: &std::sync::Mutex<Vec<(String, String)>>,
    said: &std::sync::Mutex<Vec<String>>,
) -> Result<()> {
    use std::io::Read;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        // /2015-03-31/functions/{name}/invocations
        let function = path
            .strip_prefix("/2015-03-31/functions/")
            .and_then(|p| p.strip_suffix("/invocations"))
            .unwrap_or_default()
            .to_string();
        let event: Value = serde_json::from_slice(&body).unwrap_or_default();
        seen.lock().unwrap_or_else(|e| e.into_inner()).push((
            function,
            event["action"].as_str().unwrap_or_default().to_string(),
        ));
        let mut child = Command::new(bin)
            .args(["--event", "-"])
            .envs(env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(&body)?;
        let out = child.wait_with_output()?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        said.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
            "{answer} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        // A handled error is still an answer ("ok": false); only a crash is
        // a function error.
        let crashed = answer.is_empty();
        let payload = if crashed {
            r#"{"errorMessage":"the function crashed"}"#.to_string()
        } else {
            answer
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Amz-Executed-Version: $LATEST\r\n{}Content-Length: {}\r\n\r\n{payload}",
            if crashed {
                "X-Amz-Function-Error: Unhandled\r\n"
            } else {
                ""
            },
            payload.len()
        );
        reader.get_mut().write_all(resp.as_bytes())?;
    }
}

fn follows_the_leader(mode: &str) -> Result<()> {
    follows_the_leader_via(mode, false)
}

fn follows_the_leader_via(mode: &str, via_lambda: bool) -> Result<()> {
    let net = NetNs::new(3)?;
    let moto = Moto::start(net.root_addr())?;
    let world = py(
        &moto,
        "vpc = ec2.create_vpc(CidrBlock='10.0.0.0/16')['Vpc']['VpcId']\n\
         sub = ec2.create_subnet(VpcId=vpc, CidrBlock='10.0.1.0/24')['Subnet']['SubnetId']\n\
         r = ec2.run_instances(ImageId='ami-12c6146b', InstanceType='t3.micro', MinCount=3, MaxCount=3, SubnetId=sub)\n\
         alloc = ec2.allocate_address(Domain='vpc')['AllocationId']\n\
         rtb = ec2.create_route_table(VpcId=vpc)['RouteTable']['RouteTableId']\n\
         zone = r53.create_hosted_zone(Name='tidepool.internal', CallerReference='e2e', \
         HostedZoneConfig={'PrivateZone': True}, VPC={'VPCRegion': 'us-east-1', 'VPCId': vpc})['HostedZone']['Id'].split('/')[-1]\n\
         print(json.dumps({'alloc': alloc, 'rtb': rtb, 'zone': zone, 'nodes': [{'id': i['InstanceId'], \
         'ip': i['PrivateIpAddress'], 'eni': i['NetworkInterfaces'][0]['NetworkInterfaceId']} for i in r['Instances']]}))",
    )?;
    let nodes = world["nodes"].as_array().context("instances")?.clone();
    // The function's own environment names the address, as in infra/.
    let lambda = if via_lambda {
        Some(LambdaEndpoint::start(
            net.root_addr(),
            [
                ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
                ("AWS_REGION", "us-east-1".to_string()),
                ("AWS_ACCESS_KEY_ID", "testing".to_string()),
                ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
                ("TIDEPOOL_MODE", mode.to_string()),
                (
                    "TIDEPOOL_EIP_ALLOCATION_ID",
                    world["alloc"].as_str().unwrap_or_default().to_string(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        )?)
    } else {
        None
    };
    let mut env = Vec::new();
    // What each node's holding looks like: instance, interface, private IP.
    let mut marks: Vec<Vec<String>> = Vec::new();
    for n in &nodes {
        let field = |k: &str| n[k].as_str().unwrap_or_default().to_string();
        let mac = "0e:12:34:56:78:9a";
        let values: HashMap<String, String> = [
            ("instance-id".to_string(), field("id")),
            ("local-ipv4".to_string(), field("ip")),
            ("mac".to_string(), mac.to_string()),
            (
                format!("network/interfaces/macs/{mac}/interface-id"),
                field("eni"),
            ),
            (
                "placement/availability-zone".to_string(),
                "us-east-1a".to_string(),
            ),
            ("placement/region".to_string(), "us-east-1".to_string()),
        ]
        .into_iter()
        .collect();
        let md = imds(net.root_addr(), values)?;
        marks.push(vec![field("id"), field("eni"), field("ip")]);
        let endpoint = match &lambda {
            // Only the Lambda service is reached, and it is this endpoint.
            Some(l) => ("AWS_ENDPOINT_URL_LAMBDA", format!("http://{}", l.addr)),
            None => ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
        };
        env.push(
            [
                endpoint,
                ("AWS_REGION", "us-east-1".to_string()),
                ("AWS_ACCESS_KEY_ID", "testing".to_string()),
                ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", format!("http://{md}")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        );
    }
    let section = match mode {
        "eip" => format!(
            "eip_allocation_id = \"{}\"\n",
            world["alloc"].as_str().unwrap_or_default()
        ),
        "route53" => format!(
            "hosted_zone_id = \"{}\"\nrecord_name = \"db.tidepool.internal.\"\nrecord_ttl = 1\n",
            world["zone"].as_str().unwrap_or_default()
        ),
        _ => format!(
            "route_table_ids = [\"{}\"]\nvip_cidr = \"192.168.255.10/32\"\n",
            world["rtb"].as_str().unwrap_or_default()
        ),
    };
    let via = if via_lambda {
        "via = \"lambda\"\nlambda_function = \"tidepool-failover\"\n"
    } else {
        ""
    };
    let escalation =
        format!("[escalation]\nmode = \"{mode}\"\nverify_interval = \"2s\"\n{via}{section}");
    let mut g = Group::start_custom([1, 1, 1], net, &move |_, _| escalation.clone(), env)?;
    let holds = |g: &Group, node: &str| {
        let want = &marks[index(node)];
        poll(Duration::from_secs(20), "the address to move", || {
            let h = holder(&moto, mode, &world).ok()?;
            h.iter().any(|x| want.contains(x)).then_some(())
        })
        .with_context(|| {
            format!(
                "{mode}: holder {:?}, want {want:?}; function answers {:?}; {node}'s log:\n{}",
                holder(&moto, mode, &world),
                lambda.as_ref().map(|l| l.answers()),
                g.log_tail(index(node), 30)
            )
        })
    };
    let leader = poll(Duration::from_secs(20), "a leader", || {
        let l = g.leaders();
        (l.len() == 1).then(|| l[0].clone())
    })?;
    holds(&g, &leader)?;

    g.kill(index(&leader))?;
    let killed = std::time::Instant::now();
    let next = poll(Duration::from_secs(20), "a new leader", || {
        let l = g.leaders();
        (l.len() == 1 && l[0] != leader).then(|| l[0].clone())
    })?;
    holds(&g, &next)?;
    eprintln!(
        "{mode}: the address moved from {leader} to {next} {:?} after kill -9 (including moto and polling)",
        killed.elapsed()
    );
    if let Some(l) = &lambda {
        let calls = l.calls();
        assert!(
            calls
                .iter()
                .all(|(function, _)| function == "tidepool-failover"),
            "{calls:?}"
        );
        assert!(
            calls.iter().filter(|(_, a)| a == "escalate").count() >= 2,
            "every escalation went through the function: {calls:?}"
        );
    }
    Ok(())
}

#[test]
fn the_elastic_ip_follows_the_leader_on_moto() -> Result<()> {
    follows_the_leader("eip")
}

#[test]
fn the_route53_record_follows_the_leader_on_moto() -> Result<()> {
    follows_the_leader("route53")
}

#[test]
fn the_vip_route_follows_the_leader_on_moto() -> Result<()> {
    follows_the_leader("route_table")
}

#[test]
fn the_elastic_ip_follows_the_leader_through_the_failover_lambda() -> Result<()> {
    follows_the_leader_via("eip", true)
}
