//! `tidepool-failover-lambda`: moves the service address, as an AWS Lambda
//! function or once from a shell.
//!
//! Under the Lambda runtime (`AWS_LAMBDA_RUNTIME_API` set) it serves events
//! until the runtime stops it. Otherwise `--event FILE` (or `-` for stdin)
//! runs the same handler once and prints the same JSON answer, so an
//! operator can run a planned switchover from an instance's shell.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use tidepool_failover::{AwsClients, Handler, Metadata, MoveOptions, Settings};

const USAGE: &str = "\
usage: tidepool-failover-lambda --event FILE|-

Moves tidepool's service address on AWS (Elastic IP, Route53 record or
route-table entry).

Under the AWS Lambda runtime (AWS_LAMBDA_RUNTIME_API set) it serves events.
Outside it, --event runs one event (a file, or - for stdin) and prints the
JSON answer; the exit status is 0 when the answer has \"ok\": true.

Event: {\"action\": \"escalate\"|\"de_escalate\"|\"switchover\"|\"status\",
        \"mode\": \"eip\"|\"route53\"|\"route_table\",
        \"target\": {\"instance_id\": \"i-…\", \"private_ip\": \"10.0.1.11\", \"node\": \"tp-b\"},
        \"dry_run\": false}
Settings: TIDEPOOL_MODE, TIDEPOOL_EIP_ALLOCATION_ID, TIDEPOOL_HOSTED_ZONE_ID,
TIDEPOOL_RECORD_NAME, TIDEPOOL_RECORD_TTL, TIDEPOOL_ROUTE_TABLE_IDS,
TIDEPOOL_VIP_CIDR; AWS_REGION and AWS_ENDPOINT_URL as for any AWS SDK.
Without a target, escalate and de_escalate act for this instance (IMDSv2).
Logs go to stderr (RUST_LOG, default info).";

enum Invocation {
    Help,
    Once(String),
    Runtime,
}

fn parse_args() -> anyhow::Result<Invocation> {
    let mut args = std::env::args().skip(1);
    let mut event = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Invocation::Help),
            "--event" => event = Some(args.next().context("--event needs a FILE or -")?),
            other if other.starts_with("--event=") => {
                event = Some(other["--event=".len()..].to_owned())
            }
            other => return Err(anyhow!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    match event {
        Some(source) => Ok(Invocation::Once(source)),
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => Ok(Invocation::Runtime),
        None => Err(anyhow!(
            "not under the Lambda runtime and no --event given\n\n{USAGE}"
        )),
    }
}

fn read_event(source: &str) -> anyhow::Result<Value> {
    let mut text = String::new();
    if source == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the event from stdin")?;
    } else {
        text = std::fs::read_to_string(source)
            .with_context(|| format!("reading the event from {source}"))?;
    }
    serde_json::from_str(&text).with_context(|| format!("the event in {source} is not JSON"))
}

async fn handler(in_lambda: bool) -> anyhow::Result<Handler> {
    let settings = Settings::from_env().context("reading TIDEPOOL_* settings")?;
    let options = MoveOptions::default();
    let clients = AwsClients::from_env(&options.retry).await;
    let handler = Handler::new(clients, settings, options);
    Ok(if in_lambda {
        handler
    } else {
        handler.with_metadata(Metadata::from_env())
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match parse_args()? {
        Invocation::Help => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Invocation::Once(source) => {
            let event = read_event(&source)?;
            let answer = handler(false).await?.handle(event).await;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(if answer.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Invocation::Runtime => {
            let handler = Arc::new(handler(true).await?);
            lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
                let handler = Arc::clone(&handler);
                async move { Ok::<_, lambda_runtime::Error>(handler.handle(event.payload).await) }
            }))
            .await
            .map_err(|e| anyhow!("Lambda runtime stopped: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
