//! Throttling, permission errors and timeouts: answers moto cannot give,
//! produced with the SDK's mock interceptor and a silent TCP listener.

use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::operation::associate_address::AssociateAddressOutput;
use aws_sdk_ec2::operation::describe_addresses::DescribeAddressesOutput;
use aws_sdk_ec2::types::Address;
use aws_sdk_route53::operation::change_resource_record_sets::ChangeResourceRecordSetsOutput;
use aws_sdk_route53::operation::get_change::GetChangeOutput;
use aws_sdk_route53::operation::list_resource_record_sets::ListResourceRecordSetsOutput;
use aws_sdk_route53::types::{ChangeInfo, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType};
use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, create_mock_http_client, mock};
use tidepool_failover::config::{EipConfig, Route53Config};
use tidepool_failover::eip::EipMover;
use tidepool_failover::route53::Route53Mover;
use tidepool_failover::{Error, MoveOptions, Mover, Operation, RetryPolicy, Target};

const ALLOCATION: &str = "eipalloc-0aaaabbbbccccdddd";

fn ec2_throttled() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code>\
     <Message>Request limit exceeded.</Message></Error></Errors><RequestID>r-1</RequestID></Response>"
        .to_owned()
}

fn ec2_unauthorized() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>UnauthorizedOperation</Code>\
     <Message>You are not authorized to perform this operation.</Message></Error></Errors><RequestID>r-2</RequestID></Response>"
        .to_owned()
}

fn route53_error(code: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\">\
         <Error><Type>Sender</Type><Code>{code}</Code><Message>try again</Message></Error>\
         <RequestId>r-3</RequestId></ErrorResponse>"
    )
}

fn options(max_attempts: u32) -> MoveOptions {
    MoveOptions {
        retry: RetryPolicy {
            call_timeout: Duration::from_secs(2),
            max_attempts,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            deadline: Duration::from_secs(10),
        },
        confirm_timeout: Duration::from_secs(2),
    }
}

macro_rules! mocked {
    ($krate:ident, $rules:expr) => {{
        let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
        for rule in $rules {
            interceptor = interceptor.with_rule(rule);
        }
        $krate::Client::from_conf(
            $krate::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
                // Only the crate's own retry loop may retry.
                .retry_config(RetryConfig::disabled())
                .http_client(create_mock_http_client())
                .interceptor(interceptor)
                .build(),
        )
    }};
}

fn address_on(instance: &str, ip: &str) -> DescribeAddressesOutput {
    DescribeAddressesOutput::builder()
        .addresses(
            Address::builder()
                .allocation_id(ALLOCATION)
                .public_ip("198.51.100.7")
                .association_id(format!("eipassoc-{instance}"))
                .instance_id(instance)
                .network_interface_id(format!("eni-{instance}"))
                .private_ip_address(ip)
                .build(),
        )
        .build()
}

fn eip_mover(ec2: aws_sdk_ec2::Client, max_attempts: u32) -> Mover {
    Mover::Eip(EipMover::new(
        EipConfig {
            allocation_id: ALLOCATION.to_owned(),
        },
        ec2,
        &options(max_attempts),
    ))
}

#[tokio::test]
async fn throttled_eip_calls_are_retried_and_the_move_succeeds() {
    let describe: Rule = mock!(aws_sdk_ec2::Client::describe_addresses)
        .sequence()
        .http_status(503, Some(ec2_throttled()))
        .times(2)
        .output(|| address_on("i-a", "10.0.1.10"))
        .output(|| address_on("i-b", "10.0.1.11"))
        .repeatedly()
        .build();
    let associate: Rule = mock!(aws_sdk_ec2::Client::associate_address)
        .match_requests(|req| {
            req.allow_reassociation() == Some(true)
                && req.instance_id() == Some("i-b")
                && req.allocation_id() == Some(ALLOCATION)
        })
        .sequence()
        .http_status(503, Some(ec2_throttled()))
        .output(|| {
            AssociateAddressOutput::builder()
                .association_id("eipassoc-new")
                .build()
        })
        .build();
    let mover = eip_mover(mocked!(aws_sdk_ec2, [&describe, &associate]), 4);

    let report = mover.acquire(&Target::instance("i-b")).await.unwrap();
    assert!(report.changed());
    assert_eq!(report.changes[0].operation, Operation::AssociateAddress);
    assert_eq!(
        report.after.single_holder().unwrap().instance_id.as_deref(),
        Some("i-b")
    );
    assert_eq!(
        associate.num_calls(),
        2,
        "one throttled attempt, one success"
    );
    assert!(
        describe.num_calls() >= 4,
        "two throttled reads, the read before, the read after"
    );
}

#[tokio::test]
async fn throttling_past_the_budget_reports_the_action_and_attempts() {
    let describe: Rule = mock!(aws_sdk_ec2::Client::describe_addresses)
        .sequence()
        .http_status(503, Some(ec2_throttled()))
        .repeatedly()
        .build();
    let mover = eip_mover(mocked!(aws_sdk_ec2, [&describe]), 3);
    let err = mover.holder().await.unwrap_err();
    match &err {
        Error::Exhausted {
            action,
            attempts,
            last,
            ..
        } => {
            assert_eq!(action, "ec2:DescribeAddresses");
            assert_eq!(*attempts, 3);
            assert!(last.contains("RequestLimitExceeded"), "{last}");
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert_eq!(describe.num_calls(), 3);
}

#[tokio::test]
async fn a_missing_permission_is_not_retried_and_names_the_iam_action() {
    let describe: Rule = mock!(aws_sdk_ec2::Client::describe_addresses)
        .then_output(|| address_on("i-a", "10.0.1.10"));
    let associate: Rule = mock!(aws_sdk_ec2::Client::associate_address)
        .sequence()
        .http_status(403, Some(ec2_unauthorized()))
        .repeatedly()
        .build();
    let mover = eip_mover(mocked!(aws_sdk_ec2, [&describe, &associate]), 5);
    let err = mover.acquire(&Target::instance("i-b")).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("ec2:AssociateAddress"), "{err}");
    assert_eq!(associate.num_calls(), 1);
}

fn record_on(ip: &str) -> ListResourceRecordSetsOutput {
    ListResourceRecordSetsOutput::builder()
        .resource_record_sets(
            ResourceRecordSet::builder()
                .name("db.example.internal.")
                .r#type(RrType::A)
                .ttl(1)
                .resource_records(ResourceRecord::builder().value(ip).build().unwrap())
                .build()
                .unwrap(),
        )
        .is_truncated(false)
        .max_items(1)
        .build()
        .unwrap()
}

fn change_info(status: ChangeStatus) -> ChangeInfo {
    ChangeInfo::builder()
        .id("/change/C1")
        .status(status)
        .submitted_at(aws_smithy_types::DateTime::from_secs(0))
        .build()
        .unwrap()
}

#[tokio::test]
async fn route53_prior_request_and_throttling_are_retried_and_insync_is_awaited() {
    let list: Rule = mock!(aws_sdk_route53::Client::list_resource_record_sets)
        .sequence()
        .http_status(400, Some(route53_error("Throttling")))
        .output(|| record_on("10.0.1.10"))
        .output(|| record_on("10.0.1.11"))
        .repeatedly()
        .build();
    let change: Rule = mock!(aws_sdk_route53::Client::change_resource_record_sets)
        .sequence()
        .http_status(400, Some(route53_error("PriorRequestNotComplete")))
        .http_status(400, Some(route53_error("Throttling")))
        .output(|| {
            ChangeResourceRecordSetsOutput::builder()
                .change_info(change_info(ChangeStatus::Pending))
                .build()
        })
        .build();
    let get_change: Rule = mock!(aws_sdk_route53::Client::get_change)
        .sequence()
        .output(|| {
            GetChangeOutput::builder()
                .change_info(change_info(ChangeStatus::Pending))
                .build()
        })
        .output(|| {
            GetChangeOutput::builder()
                .change_info(change_info(ChangeStatus::Insync))
                .build()
        })
        .repeatedly()
        .build();
    let no_rules: [&Rule; 0] = [];
    let mover = Mover::Route53(Route53Mover::new(
        Route53Config::new("Z1", "db.example.internal", 1),
        mocked!(aws_sdk_route53, [&list, &change, &get_change]),
        mocked!(aws_sdk_ec2, no_rules),
        &options(5),
    ));
    let target = Target::default().with_private_ip("10.0.1.11".parse().unwrap());
    let report = mover.acquire(&target).await.unwrap();
    assert!(report.changed());
    assert_eq!(change.num_calls(), 3);
    assert_eq!(get_change.num_calls(), 2, "polled until INSYNC");
    let detail = report.changes[0].detail.as_deref().unwrap();
    assert!(detail.contains("INSYNC"), "{detail}");
    assert_eq!(
        report.after.single_holder().unwrap().private_ip,
        Some("10.0.1.11".parse().unwrap())
    );
}

#[tokio::test]
async fn an_endpoint_that_never_answers_fails_within_the_call_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let policy = RetryPolicy {
        call_timeout: Duration::from_millis(300),
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        deadline: Duration::from_secs(5),
    };
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"));
    let config = tidepool_failover::clients::tuned(loader, &policy)
        .load()
        .await;
    let mover = Mover::Eip(EipMover::new(
        EipConfig {
            allocation_id: ALLOCATION.to_owned(),
        },
        aws_sdk_ec2::Client::new(&config),
        &MoveOptions {
            retry: policy,
            confirm_timeout: Duration::from_secs(1),
        },
    ));
    let started = Instant::now();
    let err = mover.holder().await.unwrap_err();
    let elapsed = started.elapsed();
    hold.abort();
    assert!(
        matches!(err, Error::Exhausted { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}
