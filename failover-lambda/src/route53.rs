//! Route53 mode: point one A record at the active node's private IP.
//!
//! The record is written with UPSERT, so it does not matter whether it
//! exists yet, and with a short TTL (1 s by default) so that resolvers
//! follow a move quickly. After the change is accepted we wait, with a
//! bounded backoff, for Route53 to report it INSYNC on its name servers;
//! the move counts as done once accepted, since the change will propagate
//! regardless and the caller should not fail over a second time for it.
//!
//! There is nothing to release: a DNS name always answers with some
//! address, and removing the record would only make clients cache a
//! negative answer. The next acquire overwrites it.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use aws_sdk_route53::types::{
    Change as RecordChange, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord,
    ResourceRecordSet, RrType,
};

use crate::clients::region_of;
use crate::config::{MoveOptions, Route53Config, normalize_record_name};
use crate::error::{Error, ResourceKind, Result, Subject};
use crate::lookup;
use crate::mode::{Intent, Mode};
use crate::model::{AddressState, Change, Holder, Operation, Placement, Target};
use crate::retry::Caller;

/// Moves the service name between nodes by rewriting its A record.
#[derive(Debug, Clone)]
pub struct Route53Mover {
    config: Route53Config,
    route53: aws_sdk_route53::Client,
    ec2: aws_sdk_ec2::Client,
    caller: Caller,
    ec2_caller: Caller,
    confirm_timeout: Duration,
}

/// The A record as read from `ListResourceRecordSets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordState {
    /// `None` when the record does not exist.
    pub record: Option<Record>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ttl: Option<i64>,
    /// The values as written; usually one IPv4 address.
    pub values: Vec<String>,
    /// True for an alias record (no values of its own).
    pub alias: bool,
}

impl RecordState {
    /// The single IPv4 address the record answers with, if it has exactly one.
    pub fn address(&self) -> Option<Ipv4Addr> {
        match self.record.as_ref()?.values.as_slice() {
            [one] => one.trim().parse().ok(),
            _ => None,
        }
    }
}

/// The one mutating call this mode makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upsert {
    pub from: Option<Holder>,
    pub to: Ipv4Addr,
}

impl Route53Mover {
    pub fn new(
        config: Route53Config,
        route53: aws_sdk_route53::Client,
        ec2: aws_sdk_ec2::Client,
        options: &MoveOptions,
    ) -> Self {
        // Route53 is a global service; errors still name the region we run in.
        let region = region_of(ec2.config().region());
        Route53Mover {
            config,
            route53,
            caller: Caller::new(options.retry.clone(), region.clone()),
            ec2_caller: Caller::new(options.retry.clone(), region),
            ec2,
            confirm_timeout: options.confirm_timeout,
        }
    }

    fn subject(&self) -> Subject {
        Subject::new(ResourceKind::HostedZone, &self.config.hosted_zone_id)
    }

    fn resource(&self) -> String {
        format!("{}/{}", self.config.hosted_zone_id, self.config.record_name)
    }

    /// Waits for INSYNC with a bounded backoff; says how it ended.
    async fn wait_insync(&self, change_id: &str) -> String {
        let started = Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            let status = self
                .caller
                .call("route53:GetChange", &self.subject(), || {
                    self.route53.get_change().id(change_id).send()
                })
                .await;
            match status {
                Ok(out) if out.change_info().map(|c| c.status()) == Some(&ChangeStatus::Insync) => {
                    return format!("change {change_id} INSYNC after {:?}", started.elapsed());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(change_id, error = %e, "could not check the Route53 change; it was accepted");
                    return format!("change {change_id} accepted; INSYNC not checked: {e}");
                }
            }
            if started.elapsed() + delay > self.config.insync_wait {
                return format!(
                    "change {change_id} accepted, still PENDING after {:?}; it will propagate",
                    started.elapsed()
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

impl Mode for Route53Mover {
    type State = RecordState;
    type Step = Upsert;

    async fn prepare(&self, target: &Target) -> Result<Target> {
        lookup::with_private_ip(&self.ec2, &self.ec2_caller, target).await
    }

    async fn read(&self) -> Result<RecordState> {
        let out = self
            .caller
            .call("route53:ListResourceRecordSets", &self.subject(), || {
                self.route53
                    .list_resource_record_sets()
                    .hosted_zone_id(&self.config.hosted_zone_id)
                    .start_record_name(&self.config.record_name)
                    .start_record_type(RrType::A)
                    .max_items(1)
                    .send()
            })
            .await?;
        // The listing starts at our name but returns whatever comes next
        // when the record is absent: compare the name and type exactly.
        let record = out
            .resource_record_sets()
            .iter()
            .find(|set| {
                normalize_record_name(&unescape_name(set.name())) == self.config.record_name
                    && *set.r#type() == RrType::A
                    && set.set_identifier().is_none()
            })
            .map(|set| Record {
                ttl: set.ttl(),
                values: set
                    .resource_records()
                    .iter()
                    .map(|r| r.value().to_owned())
                    .collect(),
                alias: set.alias_target().is_some(),
            });
        Ok(RecordState { record })
    }

    fn describe(&self, state: &RecordState) -> AddressState {
        let holder = state.address().map(|ip| Holder {
            private_ip: Some(ip),
            ..Holder::default()
        });
        let detail = state.record.as_ref().map(|r| {
            if r.alias {
                "alias record".to_owned()
            } else if holder.is_none() {
                format!("ttl {:?}, values {:?}", r.ttl, r.values)
            } else {
                format!("ttl {}", r.ttl.map_or("-".to_owned(), |t| t.to_string()))
            }
        });
        AddressState {
            placements: vec![Placement {
                resource: self.resource(),
                holder,
                detail,
            }],
        }
    }

    fn holds(&self, state: &RecordState, target: &Target) -> bool {
        target.private_ip.is_some() && state.address() == target.private_ip
    }

    fn plan(&self, state: &RecordState, target: &Target, intent: Intent) -> Vec<Upsert> {
        let Some(to) = target.private_ip else {
            return Vec::new();
        };
        let ttl_right = state.record.as_ref().and_then(|r| r.ttl) == Some(self.config.ttl);
        match intent {
            Intent::Acquire if !(self.holds(state, target) && ttl_right) => vec![Upsert {
                from: self
                    .describe(state)
                    .placements
                    .into_iter()
                    .next()
                    .and_then(|p| p.holder),
                to,
            }],
            _ => Vec::new(),
        }
    }

    fn preview(&self, step: &Upsert) -> Change {
        Change {
            resource: self.resource(),
            operation: Operation::UpsertRecord,
            from: step.from.clone(),
            to: Some(Holder {
                private_ip: Some(step.to),
                ..Holder::default()
            }),
            detail: Some(format!("ttl {}", self.config.ttl)),
        }
    }

    async fn apply(&self, step: Upsert) -> Result<Change> {
        let mut change = self.preview(&step);
        let batch = change_batch(&self.config, step.to).map_err(|e| Error::Unexpected {
            action: "route53:ChangeResourceRecordSets".to_owned(),
            detail: e.to_string(),
        })?;
        let out = self
            .caller
            .call("route53:ChangeResourceRecordSets", &self.subject(), || {
                self.route53
                    .change_resource_record_sets()
                    .hosted_zone_id(&self.config.hosted_zone_id)
                    .change_batch(batch.clone())
                    .send()
            })
            .await?;
        let change_id = out
            .change_info()
            .map(|c| c.id().to_owned())
            .unwrap_or_default();
        change.detail = Some(if change_id.is_empty() {
            "change accepted".to_owned()
        } else {
            self.wait_insync(&change_id).await
        });
        Ok(change)
    }

    fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout
    }
}

fn change_batch(
    config: &Route53Config,
    ip: Ipv4Addr,
) -> Result<ChangeBatch, aws_sdk_route53::error::BuildError> {
    let set = ResourceRecordSet::builder()
        .name(&config.record_name)
        .r#type(RrType::A)
        .ttl(config.ttl)
        .resource_records(ResourceRecord::builder().value(ip.to_string()).build()?)
        .build()?;
    ChangeBatch::builder()
        .comment(format!("tidepool: {} -> {ip}", config.record_name))
        .changes(
            RecordChange::builder()
                .action(ChangeAction::Upsert)
                .resource_record_set(set)
                .build()?,
        )
        .build()
}

/// Route53 returns some characters of names as `\ooo` octal escapes
/// (`*` as `\052`); undo that so names compare as written.
fn unescape_name(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("0");
            if let Ok(b) = u8::from_str_radix(digits, 8) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_undone() {
        assert_eq!(unescape_name("\\052.example.com."), "*.example.com.");
        assert_eq!(unescape_name("db.example.com."), "db.example.com.");
        assert_eq!(unescape_name("x\\05"), "x\\05");
    }

    #[test]
    fn address_needs_exactly_one_value() {
        let one = RecordState {
            record: Some(Record {
                ttl: Some(1),
                values: vec!["10.0.1.10".into()],
                alias: false,
            }),
        };
        assert_eq!(one.address(), Some("10.0.1.10".parse().unwrap()));
        let two = RecordState {
            record: Some(Record {
                ttl: Some(1),
                values: vec!["10.0.1.10".into(), "10.0.1.11".into()],
                alias: false,
            }),
        };
        assert_eq!(two.address(), None);
        assert_eq!(RecordState { record: None }.address(), None);
    }
}
