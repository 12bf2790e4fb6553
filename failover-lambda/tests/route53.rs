//! Route53 mode against moto.

mod common;

use std::time::Instant;

use aws_sdk_route53::types::{HostedZoneConfig, RrType, Vpc, VpcRegion};
use common::{Moto, fast_options, two_instances};
use tidepool_failover::config::Route53Config;
use tidepool_failover::{Error, ModeConfig, Mover, Operation, Target};

const RECORD: &str = "db.example.internal";

async fn private_zone(route53: &aws_sdk_route53::Client, vpc_id: &str) -> String {
    route53
        .create_hosted_zone()
        .name("example.internal")
        .caller_reference(format!("tests-{}", common::free_port()))
        .hosted_zone_config(HostedZoneConfig::builder().private_zone(true).build())
        .vpc(
            Vpc::builder()
                .vpc_id(vpc_id)
                .vpc_region(VpcRegion::UsEast1)
                .build(),
        )
        .send()
        .await
        .expect("create_hosted_zone")
        .hosted_zone
        .expect("hosted zone")
        .id
}

/// The record's (ttl, values), read directly.
async fn record(
    route53: &aws_sdk_route53::Client,
    zone: &str,
) -> Option<(Option<i64>, Vec<String>)> {
    let out = route53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .expect("list_resource_record_sets");
    out.resource_record_sets()
        .iter()
        .find(|s| s.name() == format!("{RECORD}.") && *s.r#type() == RrType::A)
        .map(|s| {
            (
                s.ttl(),
                s.resource_records()
                    .iter()
                    .map(|r| r.value().to_owned())
                    .collect(),
            )
        })
}

#[tokio::test]
async fn record_moves_from_a_to_b_and_verify_agrees() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let zone = private_zone(&clients.route53, &world.vpc_id).await;
    let mover = Mover::new(
        ModeConfig::Route53(Route53Config::new(&zone, RECORD, 1)),
        &clients,
        &fast_options(),
    );
    // Named by instance only: the private IP is looked up.
    let a = Target::instance(&world.a.instance_id);
    let b = Target::instance(&world.b.instance_id).with_private_ip(world.b.private_ip);

    assert_eq!(
        mover.holder().await.unwrap().single_holder(),
        None,
        "no record yet"
    );
    let created = mover.acquire(&a).await.unwrap();
    assert!(created.changed());
    assert_eq!(
        record(&clients.route53, &zone).await,
        Some((Some(1), vec![world.a.private_ip.to_string()]))
    );

    let started = Instant::now();
    let moved = mover.acquire(&b).await.unwrap();
    eprintln!(
        "route53 move A -> B took {:?} against moto",
        started.elapsed()
    );
    assert!(moved.changed());
    assert_eq!(moved.changes[0].operation, Operation::UpsertRecord);
    let detail = moved.changes[0].detail.as_deref().unwrap_or_default();
    assert!(detail.contains("INSYNC"), "{detail}");
    assert_eq!(
        moved.before.single_holder().unwrap().private_ip,
        Some(world.a.private_ip)
    );
    assert_eq!(
        moved.after.single_holder().unwrap().private_ip,
        Some(world.b.private_ip)
    );
    assert_eq!(
        record(&clients.route53, &zone).await,
        Some((Some(1), vec![world.b.private_ip.to_string()]))
    );

    let verified = mover.verify(&b).await.unwrap();
    assert!(verified.holds);
    assert!(!mover.verify(&a).await.unwrap().holds);

    let again = mover.acquire(&b).await.unwrap();
    assert!(!again.changed(), "{again:?}");

    // An address that has the holder's as a prefix (10.0.1.5 / 10.0.1.50)
    // is not the holder.
    let lookalike: std::net::Ipv4Addr = {
        let o = world.b.private_ip.octets();
        [o[0], o[1], o[2], o[3].saturating_mul(10)].into()
    };
    assert!(
        !mover
            .verify(&Target {
                private_ip: Some(lookalike),
                ..Target::default()
            })
            .await
            .unwrap()
            .holds
    );

    // Release leaves the record alone (a name always needs an answer).
    assert!(!mover.release(&b).await.unwrap().changed());
}

#[tokio::test]
async fn a_changed_ttl_is_rewritten() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let zone = private_zone(&clients.route53, &world.vpc_id).await;
    let b = Target::instance(&world.b.instance_id).with_private_ip(world.b.private_ip);
    let with_ttl = |ttl| {
        Mover::new(
            ModeConfig::Route53(Route53Config::new(&zone, RECORD, ttl)),
            &clients,
            &fast_options(),
        )
    };
    assert!(with_ttl(60).acquire(&b).await.unwrap().changed());
    assert_eq!(record(&clients.route53, &zone).await.unwrap().0, Some(60));
    assert!(with_ttl(1).acquire(&b).await.unwrap().changed());
    assert_eq!(record(&clients.route53, &zone).await.unwrap().0, Some(1));
}

#[tokio::test]
async fn a_wrong_hosted_zone_is_named_in_the_error() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let mover = Mover::new(
        ModeConfig::Route53(Route53Config::new("Z0NOSUCHZONE0", RECORD, 1)),
        &clients,
        &fast_options(),
    );
    let err = mover
        .acquire(&Target::instance(&world.a.instance_id).with_private_ip(world.a.private_ip))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Z0NOSUCHZONE0") && text.contains("TIDEPOOL_HOSTED_ZONE_ID"),
        "{text}"
    );
}
