//! Route-table mode against moto.

mod common;

use std::time::Instant;

use common::{Moto, fast_options, two_instances};
use tidepool_failover::config::{RouteTableConfig, parse_vip_cidr};
use tidepool_failover::{Error, ModeConfig, Mover, Operation, Target};

const VIP: &str = "192.168.99.10/32";

async fn route_table(ec2: &aws_sdk_ec2::Client, vpc_id: &str) -> String {
    ec2.create_route_table()
        .vpc_id(vpc_id)
        .send()
        .await
        .expect("create_route_table")
        .route_table
        .and_then(|t| t.route_table_id)
        .expect("route table id")
}

/// The (instance, eni) the VIP route of `table` points at, read directly.
async fn vip_route(
    ec2: &aws_sdk_ec2::Client,
    table: &str,
) -> Option<(Option<String>, Option<String>)> {
    let out = ec2
        .describe_route_tables()
        .route_table_ids(table)
        .send()
        .await
        .expect("describe_route_tables");
    out.route_tables()[0]
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some(VIP))
        .map(|r| {
            (
                r.instance_id().map(str::to_owned),
                r.network_interface_id().map(str::to_owned),
            )
        })
}

fn mover(clients: &tidepool_failover::AwsClients, tables: &[&str]) -> Mover {
    Mover::new(
        ModeConfig::RouteTable(RouteTableConfig {
            route_table_ids: tables.iter().map(|s| s.to_string()).collect(),
            vip_cidr: parse_vip_cidr(VIP).unwrap(),
        }),
        clients,
        &fast_options(),
    )
}

#[tokio::test]
async fn both_tables_end_pointing_at_b_and_a_second_call_changes_nothing() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let empty = route_table(&clients.ec2, &world.vpc_id).await;
    let on_a = route_table(&clients.ec2, &world.vpc_id).await;
    clients
        .ec2
        .create_route()
        .route_table_id(&on_a)
        .destination_cidr_block(VIP)
        .instance_id(&world.a.instance_id)
        .send()
        .await
        .expect("seed route to A");
    let mover = mover(&clients, &[&empty, &on_a]);
    let b = Target::instance(&world.b.instance_id).with_private_ip(world.b.private_ip);

    let started = Instant::now();
    let report = mover.acquire(&b).await.unwrap();
    eprintln!(
        "route_table move (2 tables) took {:?} against moto",
        started.elapsed()
    );

    let ops: Vec<(String, Operation)> = report
        .changes
        .iter()
        .map(|c| (c.resource.clone(), c.operation))
        .collect();
    assert_eq!(
        ops,
        vec![
            (empty.clone(), Operation::CreateRoute),
            (on_a.clone(), Operation::ReplaceRoute)
        ]
    );
    assert_eq!(report.before.placements[0].holder, None);
    assert_eq!(
        report.before.placements[1]
            .holder
            .as_ref()
            .unwrap()
            .instance_id
            .as_deref(),
        Some(world.a.instance_id.as_str())
    );
    let holder = report.after.single_holder().expect("both tables agree");
    assert_eq!(
        holder.instance_id.as_deref(),
        Some(world.b.instance_id.as_str())
    );
    for table in [&empty, &on_a] {
        let (instance, _) = vip_route(&clients.ec2, table).await.expect("route exists");
        assert_eq!(
            instance.as_deref(),
            Some(world.b.instance_id.as_str()),
            "table {table}"
        );
    }

    let again = mover.acquire(&b).await.unwrap();
    assert!(
        !again.changed(),
        "second acquire changed something: {again:?}"
    );
    assert!(mover.verify(&b).await.unwrap().holds);
    assert!(
        !mover
            .verify(&Target::instance(&world.a.instance_id))
            .await
            .unwrap()
            .holds
    );
}

#[tokio::test]
async fn routes_follow_an_interface_and_release_only_removes_its_own_routes() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let t1 = route_table(&clients.ec2, &world.vpc_id).await;
    let t2 = route_table(&clients.ec2, &world.vpc_id).await;
    let mover = mover(&clients, &[&t1, &t2]);
    let a = Target::eni(&world.a.eni_id);
    let b = Target::eni(&world.b.eni_id);

    assert!(mover.acquire(&a).await.unwrap().changed());
    assert_eq!(
        vip_route(&clients.ec2, &t1).await.unwrap().1.as_deref(),
        Some(world.a.eni_id.as_str())
    );

    let moved = mover.acquire(&b).await.unwrap();
    assert!(
        moved
            .changes
            .iter()
            .all(|c| c.operation == Operation::ReplaceRoute)
    );
    assert_eq!(moved.changes.len(), 2);

    // A no longer holds any table: its release touches nothing.
    let release_a = mover.release(&a).await.unwrap();
    assert!(!release_a.changed(), "{release_a:?}");
    assert!(vip_route(&clients.ec2, &t2).await.is_some());

    // A dry run of B's release plans both deletions and makes none.
    let plan = mover.plan_release(&b).await.unwrap();
    assert_eq!(plan.changes.len(), 2);
    assert!(
        plan.changes
            .iter()
            .all(|c| c.operation == Operation::DeleteRoute)
    );
    assert!(vip_route(&clients.ec2, &t1).await.is_some());

    let release_b = mover.release(&b).await.unwrap();
    assert!(release_b.changed());
    assert!(vip_route(&clients.ec2, &t1).await.is_none());
    assert!(vip_route(&clients.ec2, &t2).await.is_none());
}

#[tokio::test]
async fn a_wrong_route_table_is_named_in_the_error() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let world = two_instances(&clients.ec2).await;
    let good = route_table(&clients.ec2, &world.vpc_id).await;
    let mover = mover(&clients, &[&good, "rtb-0badbadbadbadbad0"]);
    let err = mover
        .acquire(&Target::instance(&world.b.instance_id))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("rtb-0badbadbadbadbad0") && text.contains("TIDEPOOL_ROUTE_TABLE_IDS"),
        "{text}"
    );
    // Reads come first: nothing was changed in the good table.
    assert!(vip_route(&clients.ec2, &good).await.is_none());
}
