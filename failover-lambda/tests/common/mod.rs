//! Test fixtures: a moto server per test, an IMDSv2 endpoint, and an EC2
//! world with two instances to move the address between.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::Credentials;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use tidepool_failover::{AwsClients, MoveOptions, RetryPolicy};

pub const REGION: &str = "us-east-1";

/// A retry policy with short backoffs so failing paths end quickly.
pub fn fast_options() -> MoveOptions {
    MoveOptions {
        retry: RetryPolicy {
            call_timeout: Duration::from_secs(10),
            max_attempts: 4,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            deadline: Duration::from_secs(20),
        },
        confirm_timeout: Duration::from_secs(10),
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Finds `moto_server`, failing loudly: a test that cannot reach moto must
/// not pass by doing nothing.
fn moto_server_path() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("moto_server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "moto_server is not on PATH: run scripts/setup (it installs moto[server] from \
                 scripts/requirements-test.txt) and put its venv's bin directory on PATH"
            )
        })
}

/// A moto server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    pub port: u16,
}

impl Moto {
    pub async fn start() -> Moto {
        let binary = moto_server_path();
        let port = free_port();
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for(
            "moto_server to listen",
            Duration::from_secs(30),
            || async move { tokio::net::TcpStream::connect(addr).await.ok().map(drop) },
        )
        .await;
        moto
    }

    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config_for(&self.endpoint, &fast_options().retry).await
    }

    pub async fn clients(&self) -> AwsClients {
        AwsClients::from_sdk_config(&self.sdk_config().await)
    }

    /// Environment for a child process that should reach this moto.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An SDK config for `endpoint` with test credentials and this crate's timeouts.
pub async fn sdk_config_for(endpoint: &str, policy: &RetryPolicy) -> SdkConfig {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"));
    tidepool_failover::clients::tuned(loader, policy)
        .load()
        .await
}

/// One instance to move the address to.
#[derive(Debug, Clone)]
pub struct Node {
    pub instance_id: String,
    pub eni_id: String,
    pub private_ip: Ipv4Addr,
}

/// A VPC with a subnet and two running instances, A and B.
#[derive(Debug, Clone)]
pub struct World {
    pub vpc_id: String,
    pub subnet_id: String,
    pub a: Node,
    pub b: Node,
}

pub async fn two_instances(ec2: &aws_sdk_ec2::Client) -> World {
    let vpc_id = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .expect("create_vpc")
        .vpc
        .and_then(|v| v.vpc_id)
        .expect("vpc id");
    let subnet_id = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.0.1.0/24")
        .send()
        .await
        .expect("create_subnet")
        .subnet
        .and_then(|s| s.subnet_id)
        .expect("subnet id");
    let out = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(2)
        .max_count(2)
        .subnet_id(&subnet_id)
        .send()
        .await
        .expect("run_instances");
    let nodes: Vec<Node> = out
        .instances()
        .iter()
        .map(|i| Node {
            instance_id: i.instance_id().expect("instance id").to_owned(),
            eni_id: i.network_interfaces()[0]
                .network_interface_id()
                .expect("eni id")
                .to_owned(),
            private_ip: i
                .private_ip_address()
                .expect("private ip")
                .parse()
                .expect("ipv4"),
        })
        .collect();
    assert_eq!(nodes.len(), 2);
    World {
        vpc_id,
        subnet_id,
        a: nodes[0].clone(),
        b: nodes[1].clone(),
    }
}

/// An IMDSv2 endpoint serving one instance's identity. It refuses reads
/// without a token it issued, as the real one does.
pub struct Imds {
    pub endpoint: String,
    pub token_requests: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct ImdsState {
    token: String,
    values: Arc<HashMap<String, String>>,
    token_requests: Arc<AtomicUsize>,
}

impl Imds {
    pub async fn start(instance_id: &str, local_ipv4: Ipv4Addr, eni_id: &str) -> Imds {
        let mac = "0e:12:34:56:78:9a";
        let values: HashMap<String, String> = [
            ("instance-id".to_owned(), instance_id.to_owned()),
            ("local-ipv4".to_owned(), local_ipv4.to_string()),
            ("mac".to_owned(), mac.to_owned()),
            (
                format!("network/interfaces/macs/{mac}/interface-id"),
                eni_id.to_owned(),
            ),
            (
                "placement/availability-zone".to_owned(),
                "us-east-1a".to_owned(),
            ),
            ("placement/region".to_owned(), REGION.to_owned()),
        ]
        .into_iter()
        .collect();
        let state = ImdsState {
            token: format!("token-{}", free_port()),
            values: Arc::new(values),
            token_requests: Arc::new(AtomicUsize::new(0)),
        };
        let token_requests = state.token_requests.clone();
        let app = Router::new()
            .route("/latest/api/token", put(imds_token))
            .route("/latest/meta-data/{*path}", get(imds_get))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind IMDS");
        let addr = listener.local_addr().expect("IMDS address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Imds {
            endpoint: format!("http://{addr}"),
            token_requests,
            shutdown: Some(tx),
        }
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// PUT /latest/api/token: issues the session token, echoing its TTL as the
/// real endpoint does.
async fn imds_token(
    State(state): State<ImdsState>,
    headers: HeaderMap,
) -> Result<(HeaderMap, String), StatusCode> {
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .cloned()
        .ok_or(StatusCode::BAD_REQUEST)?;
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let mut answer = HeaderMap::new();
    answer.insert("x-aws-ec2-metadata-token-ttl-seconds", ttl);
    Ok((answer, state.token.clone()))
}

async fn imds_get(
    State(state): State<ImdsState>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<String, StatusCode> {
    let token = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(state.token.as_str()) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    state
        .values
        .get(&path)
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)
}
