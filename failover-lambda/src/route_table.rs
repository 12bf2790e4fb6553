//! Route-table mode: route a VIP to the active instance in one or more
//! VPC route tables.
//!
//! Each table is handled on its own: a missing route is created, a route
//! to the wrong target is replaced, a right one is left alone. Creating and
//! replacing fall back on each other when another writer got there between
//! our read and our call, so neither "route already exists" nor "no such
//! route" can fail a move. A release deletes the route only from tables
//! where it still points at the releasing target.
//!
//! The VIP must lie outside the VPC's CIDR (AWS routes the VPC's own range
//! locally and refuses more specific routes inside it), and the target
//! instance must have source/destination checking off.

use std::time::Duration;

use aws_sdk_ec2::types::{Route, RouteState};
use ipnet::Ipv4Net;

use crate::clients::region_of;
use crate::config::{MoveOptions, RouteTableConfig};
use crate::error::{Error, ResourceKind, Result, Subject};
use crate::lookup;
use crate::mode::{Intent, Mode};
use crate::model::{AddressState, Change, Holder, Operation, Placement, Target, non_empty};
use crate::retry::Caller;

/// Points the VIP route of several route tables at one target.
#[derive(Debug, Clone)]
pub struct RouteTableMover {
    config: RouteTableConfig,
    ec2: aws_sdk_ec2::Client,
    caller: Caller,
    confirm_timeout: Duration,
}

/// The VIP route in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    pub route_table_id: String,
    /// `None` when the table has no route for the VIP.
    pub route: Option<VipRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipRoute {
    /// Set when the route targets an instance or an interface; `None` when
    /// it targets something else (a gateway, a peering connection, ...).
    pub holder: Option<Holder>,
    /// `active` or `blackhole`.
    pub state: Option<String>,
    /// The non-instance target, if that is what the route points at.
    pub other_target: Option<String>,
}

/// Every configured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTablesState {
    pub tables: Vec<TableState>,
}

/// A mutating call for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStep {
    pub route_table_id: String,
    pub operation: Operation,
    pub from: Option<Holder>,
    pub to: Option<Target>,
}

impl RouteTableMover {
    pub fn new(config: RouteTableConfig, ec2: aws_sdk_ec2::Client, options: &MoveOptions) -> Self {
        let region = region_of(ec2.config().region());
        RouteTableMover {
            config,
            ec2,
            caller: Caller::new(options.retry.clone(), region),
            confirm_timeout: options.confirm_timeout,
        }
    }

    async fn read_table(&self, id: &str) -> Result<TableState> {
        let subject = Subject::new(ResourceKind::RouteTable, id);
        let out = self
            .caller
            .call("ec2:DescribeRouteTables", &subject, || {
                self.ec2.describe_route_tables().route_table_ids(id).send()
            })
            .await?;
        let table = out
            .route_tables()
            .iter()
            .find(|t| t.route_table_id() == Some(id))
            .ok_or_else(|| {
                Error::listed_nothing("ec2:DescribeRouteTables", &subject, self.caller.region())
            })?;
        let route = table
            .routes()
            .iter()
            .find(|r| route_destination(r) == Some(self.config.vip_cidr))
            .map(vip_route);
        Ok(TableState {
            route_table_id: id.to_owned(),
            route,
        })
    }

    async fn create(&self, table: &str, to: &Target) -> Result<()> {
        let subject = Subject::new(ResourceKind::RouteTable, table);
        self.caller
            .call("ec2:CreateRoute", &subject, || {
                let req = self
                    .ec2
                    .create_route()
                    .route_table_id(table)
                    .destination_cidr_block(self.config.vip_cidr.to_string());
                match (&to.eni_id, &to.instance_id) {
                    (Some(eni), _) => req.network_interface_id(eni),
                    (None, Some(instance)) => req.instance_id(instance),
                    (None, None) => req,
                }
                .send()
            })
            .await
            .map(drop)
    }

    async fn replace(&self, table: &str, to: &Target) -> Result<()> {
        let subject = Subject::new(ResourceKind::RouteTable, table);
        self.caller
            .call("ec2:ReplaceRoute", &subject, || {
                let req = self
                    .ec2
                    .replace_route()
                    .route_table_id(table)
                    .destination_cidr_block(self.config.vip_cidr.to_string());
                match (&to.eni_id, &to.instance_id) {
                    (Some(eni), _) => req.network_interface_id(eni),
                    (None, Some(instance)) => req.instance_id(instance),
                    (None, None) => req,
                }
                .send()
            })
            .await
            .map(drop)
    }

    async fn delete(&self, table: &str) -> Result<()> {
        let subject = Subject::new(ResourceKind::RouteTable, table);
        self.caller
            .call("ec2:DeleteRoute", &subject, || {
                self.ec2
                    .delete_route()
                    .route_table_id(table)
                    .destination_cidr_block(self.config.vip_cidr.to_string())
                    .send()
            })
            .await
            .map(drop)
    }
}

impl Mode for RouteTableMover {
    type State = RouteTablesState;
    type Step = RouteStep;

    async fn prepare(&self, target: &Target) -> Result<Target> {
        lookup::with_attachment(&self.ec2, &self.caller, target).await
    }

    async fn read(&self) -> Result<RouteTablesState> {
        let mut tables = Vec::with_capacity(self.config.route_table_ids.len());
        for id in &self.config.route_table_ids {
            tables.push(self.read_table(id).await?);
        }
        Ok(RouteTablesState { tables })
    }

    fn describe(&self, state: &RouteTablesState) -> AddressState {
        let placements = state
            .tables
            .iter()
            .map(|t| Placement {
                resource: t.route_table_id.clone(),
                holder: t.route.as_ref().and_then(|r| r.holder.clone()),
                detail: Some(match &t.route {
                    None => format!("no route for {}", self.config.vip_cidr),
                    Some(r) => {
                        let mut d = format!("route {}", self.config.vip_cidr);
                        if let Some(other) = &r.other_target {
                            d.push_str(&format!(" via {other}"));
                        }
                        if let Some(s) = &r.state {
                            d.push_str(&format!(" ({s})"));
                        }
                        d
                    }
                }),
            })
            .collect();
        AddressState { placements }
    }

    fn holds(&self, state: &RouteTablesState, target: &Target) -> bool {
        state.tables.iter().all(|t| table_points_at(t, target))
    }

    fn plan(&self, state: &RouteTablesState, target: &Target, intent: Intent) -> Vec<RouteStep> {
        state
            .tables
            .iter()
            .filter_map(|t| {
                let from = t.route.as_ref().and_then(|r| r.holder.clone());
                let operation = match (intent, &t.route, table_points_at(t, target)) {
                    (Intent::Acquire, None, _) => Operation::CreateRoute,
                    (Intent::Acquire, Some(_), false) => Operation::ReplaceRoute,
                    (Intent::Release, Some(_), true) => Operation::DeleteRoute,
                    _ => return None,
                };
                Some(RouteStep {
                    route_table_id: t.route_table_id.clone(),
                    operation,
                    from,
                    to: (intent == Intent::Acquire).then(|| target.clone()),
                })
            })
            .collect()
    }

    fn preview(&self, step: &RouteStep) -> Change {
        Change {
            resource: step.route_table_id.clone(),
            operation: step.operation,
            from: step.from.clone(),
            to: step.to.as_ref().map(route_holder),
            detail: Some(format!("destination {}", self.config.vip_cidr)),
        }
    }

    async fn apply(&self, step: RouteStep) -> Result<Change> {
        let mut change = self.preview(&step);
        let table = step.route_table_id.as_str();
        match (step.operation, &step.to) {
            (Operation::CreateRoute, Some(to)) => match self.create(table, to).await {
                // Another writer created it since our read: replace instead.
                Err(e) if e.code() == Some("RouteAlreadyExists") => {
                    self.replace(table, to).await?;
                    change.operation = Operation::ReplaceRoute;
                }
                other => other?,
            },
            (Operation::ReplaceRoute, Some(to)) => match self.replace(table, to).await {
                // Deleted since our read: create instead.
                Err(e) if route_missing(&e) => {
                    self.create(table, to).await?;
                    change.operation = Operation::CreateRoute;
                }
                other => other?,
            },
            (Operation::DeleteRoute, _) => match self.delete(table).await {
                Err(e) if route_missing(&e) => {
                    change.detail = Some("route was already gone".to_owned());
                }
                other => other?,
            },
            (operation, to) => {
                return Err(Error::Unexpected {
                    action: "route table plan".to_owned(),
                    detail: format!("{operation:?} with target {to:?}"),
                });
            }
        }
        Ok(change)
    }

    fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout
    }
}

/// Whether a route call failed because the route does not exist. EC2
/// says so with `InvalidRoute.NotFound`, or for ReplaceRoute with an
/// `InvalidParameterValue` that points to CreateRoute.
fn route_missing(error: &Error) -> bool {
    match error.code() {
        Some("InvalidRoute.NotFound") => true,
        Some("InvalidParameterValue") => error
            .aws_message()
            .is_some_and(|m| m.contains("CreateRoute")),
        _ => false,
    }
}

/// How the route would read back once written for `target`.
fn route_holder(target: &Target) -> Holder {
    Holder {
        instance_id: target.instance_id.clone(),
        eni_id: target.eni_id.clone(),
        private_ip: None,
    }
}

fn table_points_at(table: &TableState, target: &Target) -> bool {
    table
        .route
        .as_ref()
        .and_then(|r| r.holder.as_ref())
        .is_some_and(|h| target.is_attached_to(h))
}

fn route_destination(route: &Route) -> Option<Ipv4Net> {
    route
        .destination_cidr_block()
        .and_then(|c| c.parse::<Ipv4Net>().ok())
        .map(|n| n.trunc())
}

fn vip_route(route: &Route) -> VipRoute {
    let instance_id = non_empty(route.instance_id());
    let eni_id = non_empty(route.network_interface_id());
    let holder = (instance_id.is_some() || eni_id.is_some()).then_some(Holder {
        instance_id,
        eni_id,
        private_ip: None,
    });
    let other_target = [
        route.gateway_id(),
        route.nat_gateway_id(),
        route.transit_gateway_id(),
        route.vpc_peering_connection_id(),
        route.local_gateway_id(),
        route.carrier_gateway_id(),
        route.egress_only_internet_gateway_id(),
    ]
    .into_iter()
    .find_map(non_empty);
    VipRoute {
        holder,
        state: route.state().map(|s: &RouteState| s.as_str().to_owned()),
        other_target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(id: &str, holder: Option<Holder>) -> TableState {
        TableState {
            route_table_id: id.into(),
            route: holder.map(|h| VipRoute {
                holder: Some(h),
                state: Some("active".into()),
                other_target: None,
            }),
        }
    }

    fn on(instance: &str) -> Holder {
        Holder {
            instance_id: Some(instance.into()),
            eni_id: Some(format!("eni-{instance}")),
            private_ip: None,
        }
    }

    #[test]
    fn vip_route_is_found_by_parsed_destination() {
        let route = Route::builder()
            .destination_cidr_block("10.99.0.10/32")
            .instance_id("i-a")
            .state(RouteState::Active)
            .build();
        assert_eq!(
            route_destination(&route),
            Some("10.99.0.10/32".parse().unwrap())
        );
        let r = vip_route(&route);
        assert_eq!(r.holder.unwrap().instance_id.as_deref(), Some("i-a"));
        let gw = Route::builder()
            .destination_cidr_block("0.0.0.0/0")
            .gateway_id("igw-1")
            .build();
        assert_eq!(vip_route(&gw).other_target.as_deref(), Some("igw-1"));
        assert!(vip_route(&gw).holder.is_none());
    }

    fn offline_mover() -> RouteTableMover {
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::Config::builder()
                .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
                .region(aws_sdk_ec2::config::Region::new("us-east-1"))
                .build(),
        );
        let config = RouteTableConfig {
            route_table_ids: vec!["rtb-none".into(), "rtb-a".into(), "rtb-b".into()],
            vip_cidr: "10.99.0.10/32".parse().unwrap(),
        };
        RouteTableMover::new(config, ec2, &MoveOptions::default())
    }

    #[test]
    fn plan_is_per_table() {
        let mover = offline_mover();
        let state = RouteTablesState {
            tables: vec![
                table("rtb-none", None),
                table("rtb-a", Some(on("i-a"))),
                table("rtb-b", Some(on("i-b"))),
            ],
        };
        let target = Target::instance("i-b");
        let acquire: Vec<_> = mover
            .plan(&state, &target, Intent::Acquire)
            .into_iter()
            .map(|s| (s.route_table_id, s.operation))
            .collect();
        assert_eq!(
            acquire,
            vec![
                ("rtb-none".to_owned(), Operation::CreateRoute),
                ("rtb-a".to_owned(), Operation::ReplaceRoute)
            ]
        );
        assert!(!mover.holds(&state, &target));
        let release: Vec<_> = mover
            .plan(&state, &target, Intent::Release)
            .into_iter()
            .map(|s| (s.route_table_id, s.operation))
            .collect();
        assert_eq!(release, vec![("rtb-b".to_owned(), Operation::DeleteRoute)]);
    }

    #[test]
    fn a_missing_route_is_recognised_in_both_spellings() {
        let rejected = |code: &str, message: &str| Error::Rejected {
            reply: Box::new(crate::error::AwsReply {
                action: "ec2:ReplaceRoute".into(),
                region: "us-east-1".into(),
                code: code.into(),
                message: message.into(),
            }),
        };
        assert!(route_missing(&rejected(
            "InvalidParameterValue",
            "There is no route defined for '10.99.0.10/32' in the route table. Use CreateRoute instead."
        )));
        assert!(route_missing(&rejected(
            "InvalidRoute.NotFound",
            "no route"
        )));
        assert!(!route_missing(&rejected(
            "InvalidParameterValue",
            "bad CIDR"
        )));
    }
}
