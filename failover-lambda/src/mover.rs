//! One interface over the three address modes; the loop they share is in
//! `mode`.

use crate::clients::AwsClients;
use crate::config::{ModeConfig, ModeName, MoveOptions};
use crate::eip::EipMover;
use crate::error::Result;
pub use crate::mode::Intent;
use crate::mode::{Mode, run, verify};
use crate::model::{AddressState, MoveReport, Target, Verification};
use crate::route_table::RouteTableMover;
use crate::route53::Route53Mover;

/// Moves the service address in one of the three AWS modes.
///
/// Every method is idempotent: it reads first and changes only what is
/// wrong, so callers may repeat them freely (the proxy's watchdog does, on
/// every escalation and on every retry).
#[derive(Debug, Clone)]
pub enum Mover {
    Eip(EipMover),
    Route53(Route53Mover),
    RouteTable(RouteTableMover),
}

macro_rules! dispatch {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Mover::Eip($m) => $body,
            Mover::Route53($m) => $body,
            Mover::RouteTable($m) => $body,
        }
    };
}

impl Mover {
    /// Builds the mover for `config` over `clients`.
    pub fn new(config: ModeConfig, clients: &AwsClients, options: &MoveOptions) -> Mover {
        match config {
            ModeConfig::Eip(c) => Mover::Eip(EipMover::new(c, clients.ec2.clone(), options)),
            ModeConfig::Route53(c) => Mover::Route53(Route53Mover::new(
                c,
                clients.route53.clone(),
                clients.ec2.clone(),
                options,
            )),
            ModeConfig::RouteTable(c) => {
                Mover::RouteTable(RouteTableMover::new(c, clients.ec2.clone(), options))
            }
        }
    }

    pub fn mode(&self) -> ModeName {
        match self {
            Mover::Eip(_) => ModeName::Eip,
            Mover::Route53(_) => ModeName::Route53,
            Mover::RouteTable(_) => ModeName::RouteTable,
        }
    }

    /// Where the address points now.
    pub async fn holder(&self) -> Result<AddressState> {
        dispatch!(self, m => m.read().await.map(|s| m.describe(&s)))
    }

    /// Points the address at `target`.
    pub async fn acquire(&self, target: &Target) -> Result<MoveReport> {
        dispatch!(self, m => run(m, target, Intent::Acquire, false).await)
    }

    /// Stops the address pointing at `target`; leaves it alone when another
    /// holder already has it.
    pub async fn release(&self, target: &Target) -> Result<MoveReport> {
        dispatch!(self, m => run(m, target, Intent::Release, false).await)
    }

    /// What [`Mover::acquire`] would change, changing nothing.
    pub async fn plan_acquire(&self, target: &Target) -> Result<MoveReport> {
        dispatch!(self, m => run(m, target, Intent::Acquire, true).await)
    }

    /// What [`Mover::release`] would change, changing nothing.
    pub async fn plan_release(&self, target: &Target) -> Result<MoveReport> {
        dispatch!(self, m => run(m, target, Intent::Release, true).await)
    }

    /// Whether the address points at `target`, from a fresh read.
    pub async fn verify(&self, target: &Target) -> Result<Verification> {
        dispatch!(self, m => verify(m, target).await)
    }
}
