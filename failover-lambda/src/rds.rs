//! RDS and Aurora: where the writer is, and planned switchovers.
//!
//! When the databases are managed by RDS, tidepool does not promote
//! anything itself; it needs to know which instance writes (to route
//! writes) and, for a planned switchover, to ask RDS to move the writer.
//! Aurora moves it with `FailoverDBCluster` to a named reader; a Multi-AZ
//! DB instance fails over to its standby with a reboot that forces it.
//! Like the address movers, a switchover reads first, does nothing when
//! the target already writes, and then polls until the topology shows it.

use std::time::{Duration, Instant};

use aws_sdk_rds::types::Filter;
use serde::{Deserialize, Serialize};

use crate::clients::region_of;
use crate::error::{Error, ResourceKind, Result, Subject};
use crate::retry::{Caller, RetryPolicy};

/// A DB instance's network endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: String,
    pub port: Option<i32>,
}

/// One instance of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub instance_id: String,
    pub endpoint: Option<Endpoint>,
    /// RDS status (`available`, `rebooting`, ...).
    pub status: Option<String>,
    pub availability_zone: Option<String>,
    pub promotion_tier: Option<i32>,
}

/// A cluster's writer and readers as RDS reports them now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub cluster_id: String,
    pub engine: Option<String>,
    pub status: Option<String>,
    /// The cluster (writer) endpoint.
    pub endpoint: Option<Endpoint>,
    pub reader_endpoint: Option<Endpoint>,
    pub writer: Option<Member>,
    pub readers: Vec<Member>,
}

impl Topology {
    pub fn writer_id(&self) -> Option<&str> {
        self.writer.as_ref().map(|w| w.instance_id.as_str())
    }

    fn member_ids(&self) -> Vec<&str> {
        self.writer
            .iter()
            .chain(&self.readers)
            .map(|m| m.instance_id.as_str())
            .collect()
    }
}

/// The outcome of a planned switchover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverReport {
    pub before: Topology,
    pub after: Topology,
    /// Whether a failover was requested (false when the target already wrote).
    pub changed: bool,
}

/// Reads and switches over RDS clusters.
#[derive(Debug, Clone)]
pub struct Rds {
    client: aws_sdk_rds::Client,
    caller: Caller,
    /// How long a switchover may take to show in the topology.
    pub switchover_timeout: Duration,
}

impl Rds {
    pub fn new(client: aws_sdk_rds::Client, policy: RetryPolicy) -> Rds {
        let region = region_of(client.config().region());
        Rds {
            client,
            caller: Caller::new(policy, region),
            switchover_timeout: Duration::from_secs(300),
        }
    }

    /// The writer, readers and endpoints of an Aurora (or Multi-AZ) cluster.
    pub async fn topology(&self, cluster_id: &str) -> Result<Topology> {
        let subject = Subject::new(ResourceKind::DbCluster, cluster_id);
        let clusters = self
            .caller
            .call("rds:DescribeDBClusters", &subject, || {
                self.client
                    .describe_db_clusters()
                    .db_cluster_identifier(cluster_id)
                    .send()
            })
            .await?;
        let cluster = clusters
            .db_clusters()
            .iter()
            .find(|c| c.db_cluster_identifier() == Some(cluster_id))
            .ok_or_else(|| {
                Error::listed_nothing("rds:DescribeDBClusters", &subject, self.caller.region())
            })?;
        let instances = self
            .caller
            .call("rds:DescribeDBInstances", &subject, || {
                self.client
                    .describe_db_instances()
                    .filters(
                        Filter::builder()
                            .name("db-cluster-id")
                            .values(cluster_id)
                            .build(),
                    )
                    .send()
            })
            .await?;
        let port = cluster.port();
        let mut writer = None;
        let mut readers = Vec::new();
        for m in cluster.db_cluster_members() {
            let Some(id) = m.db_instance_identifier() else {
                continue;
            };
            let instance = instances
                .db_instances()
                .iter()
                .find(|i| i.db_instance_identifier() == Some(id));
            let member = Member {
                instance_id: id.to_owned(),
                endpoint: instance.and_then(|i| i.endpoint()).and_then(|e| {
                    e.address().map(|a| Endpoint {
                        address: a.to_owned(),
                        port: e.port(),
                    })
                }),
                status: instance
                    .and_then(|i| i.db_instance_status())
                    .map(str::to_owned),
                availability_zone: instance
                    .and_then(|i| i.availability_zone())
                    .map(str::to_owned),
                promotion_tier: m.promotion_tier(),
            };
            if m.is_cluster_writer() == Some(true) {
                writer = Some(member);
            } else {
                readers.push(member);
            }
        }
        readers.sort_by(|a, b| {
            (a.promotion_tier, &a.instance_id).cmp(&(b.promotion_tier, &b.instance_id))
        });
        Ok(Topology {
            cluster_id: cluster_id.to_owned(),
            engine: cluster.engine().map(str::to_owned),
            status: cluster.status().map(str::to_owned),
            endpoint: cluster.endpoint().map(|a| Endpoint {
                address: a.to_owned(),
                port,
            }),
            reader_endpoint: cluster.reader_endpoint().map(|a| Endpoint {
                address: a.to_owned(),
                port,
            }),
            writer,
            readers,
        })
    }

    /// Makes `target_instance` the writer of an Aurora cluster and waits
    /// until the topology shows it.
    pub async fn switchover_cluster(
        &self,
        cluster_id: &str,
        target_instance: &str,
    ) -> Result<SwitchoverReport> {
        let before = self.topology(cluster_id).await?;
        if before.writer_id() == Some(target_instance) {
            return Ok(SwitchoverReport {
                after: before.clone(),
                before,
                changed: false,
            });
        }
        if !before.member_ids().contains(&target_instance) {
            return Err(Error::Target(format!(
                "{target_instance} is not a member of DB cluster {cluster_id} (members: {})",
                before.member_ids().join(", ")
            )));
        }
        let subject = Subject::new(ResourceKind::DbCluster, cluster_id);
        self.caller
            .call("rds:FailoverDBCluster", &subject, || {
                self.client
                    .failover_db_cluster()
                    .db_cluster_identifier(cluster_id)
                    .target_db_instance_identifier(target_instance)
                    .send()
            })
            .await?;
        tracing::info!(cluster_id, target_instance, "requested DB cluster failover");
        let after = self.wait_for_writer(cluster_id, target_instance).await?;
        Ok(SwitchoverReport {
            before,
            after,
            changed: true,
        })
    }

    /// Fails a Multi-AZ DB instance over to its standby by rebooting it
    /// with `ForceFailover`. Refuses single-AZ instances, where a reboot
    /// would be an outage and no failover.
    pub async fn reboot_with_failover(&self, instance_id: &str) -> Result<Option<String>> {
        let subject = Subject::new(ResourceKind::DbInstance, instance_id);
        let described = self
            .caller
            .call("rds:DescribeDBInstances", &subject, || {
                self.client
                    .describe_db_instances()
                    .db_instance_identifier(instance_id)
                    .send()
            })
            .await?;
        let instance = described
            .db_instances()
            .iter()
            .find(|i| i.db_instance_identifier() == Some(instance_id))
            .ok_or_else(|| {
                Error::listed_nothing("rds:DescribeDBInstances", &subject, self.caller.region())
            })?;
        if instance.multi_az() != Some(true) {
            return Err(Error::Target(format!(
                "DB instance {instance_id} is not Multi-AZ: a forced-failover reboot needs a standby \
                 (for Aurora, use a cluster switchover)"
            )));
        }
        let out = self
            .caller
            .call("rds:RebootDBInstance", &subject, || {
                self.client
                    .reboot_db_instance()
                    .db_instance_identifier(instance_id)
                    .force_failover(true)
                    .send()
            })
            .await?;
        tracing::info!(instance_id, "requested Multi-AZ failover reboot");
        Ok(out
            .db_instance()
            .and_then(|i| i.db_instance_status())
            .map(str::to_owned))
    }

    async fn wait_for_writer(&self, cluster_id: &str, target: &str) -> Result<Topology> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(500);
        loop {
            let topology = self.topology(cluster_id).await?;
            if topology.writer_id() == Some(target) {
                return Ok(topology);
            }
            if started.elapsed() + delay > self.switchover_timeout {
                return Err(Error::NotConfirmed {
                    resource: format!("DB cluster {cluster_id}"),
                    waited: started.elapsed(),
                    detail: format!("writer is {:?}, expected {target}", topology.writer_id()),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
