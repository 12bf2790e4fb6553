//! Elastic IP mode against moto.

mod common;

use std::time::Instant;

use common::{Moto, fast_options, two_instances};
use tidepool_failover::config::EipConfig;
use tidepool_failover::{Error, ModeConfig, Mover, Operation, Target};

async fn allocate(ec2: &aws_sdk_ec2::Client) -> String {
    ec2.allocate_address()
        .domain(aws_sdk_ec2::types::DomainType::Vpc)
        .send()
        .await
        .expect("allocate_address")
        .allocation_id
        .expect("allocation id")
}

async fn associated_instance(ec2: &aws_sdk_ec2::Client, allocation_id: &str) -> Option<String> {
    let out = ec2
        .describe_addresses()
        .allocation_ids(allocation_id)
        .send()
        .await
        .expect("describe_addresses");
    out.addresses()[0]
        .instance_id()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[tokio::test]
async fn address_moves_from_a_to_b_once_and_release_respects_the_new_holder() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let allocation_id = allocate(&clients.ec2).await;
    let mover = Mover::new(
        ModeConfig::Eip(EipConfig {
            allocation_id: allocation_id.clone(),
        }),
        &clients,
        &fast_options(),
    );
    let a = Target::instance(&world.a.instance_id).with_private_ip(world.a.private_ip);
    let b = Target::instance(&world.b.instance_id).with_private_ip(world.b.private_ip);

    // Unassociated at first: nobody holds it.
    assert_eq!(mover.holder().await.unwrap().single_holder(), None);

    let first = mover.acquire(&a).await.unwrap();
    assert!(first.changed());
    assert_eq!(
        associated_instance(&clients.ec2, &allocation_id)
            .await
            .as_deref(),
        Some(world.a.instance_id.as_str())
    );

    let started = Instant::now();
    let moved = mover.acquire(&b).await.unwrap();
    eprintln!("eip move A -> B took {:?} against moto", started.elapsed());
    assert!(moved.changed());
    assert_eq!(moved.changes.len(), 1);
    assert_eq!(moved.changes[0].operation, Operation::AssociateAddress);
    let before = moved.before.single_holder().expect("A held it before");
    assert_eq!(
        before.instance_id.as_deref(),
        Some(world.a.instance_id.as_str())
    );
    let after = moved.after.single_holder().expect("B holds it after");
    assert_eq!(
        after.instance_id.as_deref(),
        Some(world.b.instance_id.as_str())
    );
    assert_eq!(after.eni_id.as_deref(), Some(world.b.eni_id.as_str()));
    assert_eq!(after.private_ip, Some(world.b.private_ip));
    assert_eq!(
        associated_instance(&clients.ec2, &allocation_id)
            .await
            .as_deref(),
        Some(world.b.instance_id.as_str())
    );

    // Repeating the move makes no mutating call.
    let again = mover.acquire(&b).await.unwrap();
    assert!(
        !again.changed(),
        "second acquire changed something: {again:?}"
    );
    assert!(again.changes.is_empty());

    assert!(mover.verify(&b).await.unwrap().holds);
    assert!(!mover.verify(&a).await.unwrap().holds);

    // A stepping down late must not take the address from B.
    let release_a = mover.release(&a).await.unwrap();
    assert!(
        !release_a.changed(),
        "release by A changed something: {release_a:?}"
    );
    assert_eq!(
        associated_instance(&clients.ec2, &allocation_id)
            .await
            .as_deref(),
        Some(world.b.instance_id.as_str())
    );

    // B releasing disassociates, and the empty instance id reads as "nobody".
    let release_b = mover.release(&b).await.unwrap();
    assert!(release_b.changed());
    assert_eq!(
        release_b.changes[0].operation,
        Operation::DisassociateAddress
    );
    assert_eq!(release_b.after.single_holder(), None);
    assert_eq!(
        associated_instance(&clients.ec2, &allocation_id).await,
        None
    );
    let release_again = mover.release(&b).await.unwrap();
    assert!(!release_again.changed());
}

#[tokio::test]
async fn address_moves_to_a_network_interface_and_a_dry_run_changes_nothing() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let allocation_id = allocate(&clients.ec2).await;
    let mover = Mover::new(
        ModeConfig::Eip(EipConfig {
            allocation_id: allocation_id.clone(),
        }),
        &clients,
        &fast_options(),
    );
    let by_eni = Target::eni(&world.b.eni_id).with_private_ip(world.b.private_ip);

    let plan = mover.plan_acquire(&by_eni).await.unwrap();
    assert!(!plan.applied && !plan.changed());
    assert_eq!(
        plan.changes.len(),
        1,
        "the plan names the association it would make"
    );
    assert_eq!(
        associated_instance(&clients.ec2, &allocation_id).await,
        None
    );

    let report = mover.acquire(&by_eni).await.unwrap();
    assert!(report.changed());
    let holder = report.after.single_holder().unwrap();
    assert_eq!(holder.eni_id.as_deref(), Some(world.b.eni_id.as_str()));
    assert!(!mover.acquire(&by_eni).await.unwrap().changed());

    // A target named only by private IP is resolved to its interface.
    let by_ip = Target {
        private_ip: Some(world.a.private_ip),
        ..Target::default()
    };
    let report = mover.acquire(&by_ip).await.unwrap();
    assert!(report.changed());
    assert_eq!(
        report.after.single_holder().unwrap().eni_id.as_deref(),
        Some(world.a.eni_id.as_str())
    );
}

#[tokio::test]
async fn a_wrong_allocation_id_is_named_in_the_error() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let mover = Mover::new(
        ModeConfig::Eip(EipConfig {
            allocation_id: "eipalloc-0123456789abcdef0".to_owned(),
        }),
        &clients,
        &fast_options(),
    );
    let err = mover
        .acquire(&Target::instance(&world.a.instance_id))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("eipalloc-0123456789abcdef0"), "{text}");
    assert!(
        text.contains("us-east-1") && text.contains("TIDEPOOL_EIP_ALLOCATION_ID"),
        "{text}"
    );
}
