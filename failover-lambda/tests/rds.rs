//! RDS topology and planned switchovers against moto's aurora-postgresql.

mod common;

use common::{Moto, fast_options};
use tidepool_failover::{Error, Rds};

async fn aurora_cluster(rds: &aws_sdk_rds::Client, cluster: &str, instances: &[&str]) {
    rds.create_db_cluster()
        .db_cluster_identifier(cluster)
        .engine("aurora-postgresql")
        .master_username("tidepool")
        .master_user_password("password-1")
        .send()
        .await
        .expect("create_db_cluster");
    for id in instances {
        rds.create_db_instance()
            .db_instance_identifier(*id)
            .db_cluster_identifier(cluster)
            .engine("aurora-postgresql")
            .db_instance_class("db.r6g.large")
            .send()
            .await
            .expect("create_db_instance");
    }
}

#[tokio::test]
async fn topology_names_writer_and_readers_and_switchover_moves_the_writer_once() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    aurora_cluster(
        &clients.rds,
        "orders",
        &["orders-1", "orders-2", "orders-3"],
    )
    .await;
    let rds = Rds::new(clients.rds.clone(), fast_options().retry);

    let topology = rds.topology("orders").await.unwrap();
    assert_eq!(topology.engine.as_deref(), Some("aurora-postgresql"));
    assert_eq!(topology.writer_id(), Some("orders-1"));
    let readers: Vec<&str> = topology
        .readers
        .iter()
        .map(|r| r.instance_id.as_str())
        .collect();
    assert_eq!(readers, vec!["orders-2", "orders-3"]);
    let writer = topology.writer.as_ref().unwrap();
    let endpoint = writer.endpoint.as_ref().expect("writer endpoint");
    assert!(endpoint.address.starts_with("orders-1."), "{endpoint:?}");
    assert_eq!(endpoint.port, Some(5432));
    assert!(topology.endpoint.is_some() && topology.reader_endpoint.is_some());
    assert_eq!(writer.status.as_deref(), Some("available"));

    let report = rds.switchover_cluster("orders", "orders-3").await.unwrap();
    assert!(report.changed);
    assert_eq!(report.before.writer_id(), Some("orders-1"));
    assert_eq!(report.after.writer_id(), Some("orders-3"));
    assert!(
        report
            .after
            .readers
            .iter()
            .any(|r| r.instance_id == "orders-1")
    );

    let again = rds.switchover_cluster("orders", "orders-3").await.unwrap();
    assert!(!again.changed, "the target already writes: no failover");

    let err = rds
        .switchover_cluster("orders", "billing-1")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Target(_)), "{err:?}");
    assert!(
        err.to_string().contains("billing-1") && err.to_string().contains("orders-2"),
        "{err}"
    );
}

#[tokio::test]
async fn a_wrong_cluster_is_named_in_the_error() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    let rds = Rds::new(clients.rds.clone(), fast_options().retry);
    let err = rds.topology("no-such-cluster").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-cluster"), "{err}");
}

#[tokio::test]
async fn multi_az_instances_fail_over_by_reboot_and_single_az_ones_are_refused() {
    let moto = Moto::start().await;
    let clients = moto.clients().await;
    for (id, multi_az) in [("pg-ha", true), ("pg-single", false)] {
        clients
            .rds
            .create_db_instance()
            .db_instance_identifier(id)
            .engine("postgres")
            .db_instance_class("db.m6g.large")
            .allocated_storage(20)
            .master_username("tidepool")
            .master_user_password("password-1")
            .multi_az(multi_az)
            .send()
            .await
            .expect("create_db_instance");
    }
    let rds = Rds::new(clients.rds.clone(), fast_options().retry);
    let status = rds.reboot_with_failover("pg-ha").await.unwrap();
    assert!(
        status.is_some(),
        "RDS reports the instance status after the reboot request"
    );
    let err = rds.reboot_with_failover("pg-single").await.unwrap_err();
    assert!(err.to_string().contains("not Multi-AZ"), "{err}");
    let err = rds.reboot_with_failover("pg-missing").await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }) && err.to_string().contains("pg-missing"),
        "{err:?}"
    );
}
