//! One interface over the three address modes.
//!
//! Every mode follows the same loop, written once here: read the current
//! state, plan the changes that would make it right (a pure function of the
//! state and the target), make only those, then read again until the plan
//! comes back empty. An empty first plan means no mutating call at all,
//! which is what makes every operation safe to repeat.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::clients::AwsClients;
use crate::config::{ModeConfig, ModeName, MoveOptions};
use crate::eip::EipMover;
use crate::error::{Error, Result};
use crate::model::{AddressState, Change, MoveReport, Target, Verification};
use crate::route_table::RouteTableMover;
use crate::route53::Route53Mover;

/// What a move is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Make the address point at the target.
    Acquire,
    /// Stop the address pointing at the target, and touch nothing if it
    /// already points elsewhere.
    Release,
}

/// What each mode provides to the shared read–plan–apply–confirm loop.
pub(crate) trait Mode: Sync {
    /// Everything read from AWS that decisions depend on.
    type State: Send + Sync;
    /// One mutating call to make.
    type Step: Send + Sync;

    /// Fills in what this mode needs from the target (e.g. the private IP
    /// of a named instance), or says what is missing.
    fn prepare(&self, target: &Target) -> impl Future<Output = Result<Target>> + Send;

    /// Reads the current state from AWS.
    fn read(&self) -> impl Future<Output = Result<Self::State>> + Send;

    /// The state in the shape every mode reports.
    fn describe(&self, state: &Self::State) -> AddressState;

    /// Whether the address points at the target.
    fn holds(&self, state: &Self::State, target: &Target) -> bool;

    /// The calls that would bring `state` to what `intent` wants; empty
    /// when it is already there.
    fn plan(&self, state: &Self::State, target: &Target, intent: Intent) -> Vec<Self::Step>;

    /// The change a step would make, without making it.
    fn preview(&self, step: &Self::Step) -> Change;

    /// Makes the call.
    fn apply(&self, step: Self::Step) -> impl Future<Output = Result<Change>> + Send;

    /// How long fresh reads may lag behind an applied change.
    fn confirm_timeout(&self) -> Duration;
}

/// Runs one acquire or release through a mode.
pub(crate) async fn run<M: Mode>(
    mode: &M,
    target: &Target,
    intent: Intent,
    dry_run: bool,
) -> Result<MoveReport> {
    let target = mode.prepare(target).await?;
    let state = mode.read().await?;
    let before = mode.describe(&state);
    let steps = mode.plan(&state, &target, intent);
    if steps.is_empty() || dry_run {
        return Ok(MoveReport {
            after: before.clone(),
            before,
            changes: steps.iter().map(|s| mode.preview(s)).collect(),
            applied: !dry_run,
        });
    }
    let mut changes = Vec::with_capacity(steps.len());
    for step in steps {
        let change = mode.apply(step).await?;
        tracing::info!(resource = %change.resource, operation = ?change.operation, target = %target.label(), "address changed");
        changes.push(change);
    }
    let after = confirm(mode, &target, intent).await?;
    Ok(MoveReport {
        before,
        after,
        changes,
        applied: true,
    })
}

/// Reads until the plan for `intent` is empty, or the confirm timeout ends.
async fn confirm<M: Mode>(mode: &M, target: &Target, intent: Intent) -> Result<AddressState> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let state = mode.read().await?;
        let pending = mode.plan(&state, target, intent);
        if pending.is_empty() {
            return Ok(mode.describe(&state));
        }
        if started.elapsed() + delay > mode.confirm_timeout() {
            let detail = pending
                .iter()
                .map(|s| {
                    let c = mode.preview(s);
                    format!("{} still needs {:?}", c.resource, c.operation)
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Error::NotConfirmed {
                resource: pending_resource(mode, &pending),
                waited: started.elapsed(),
                detail,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

fn pending_resource<M: Mode>(mode: &M, pending: &[M::Step]) -> String {
    pending
        .iter()
        .map(|s| mode.preview(s).resource)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn verify<M: Mode>(mode: &M, target: &Target) -> Result<Verification> {
    let target = mode.prepare(target).await?;
    let state = mode.read().await?;
    Ok(Verification {
        holds: mode.holds(&state, &target),
        state: mode.describe(&state),
    })
}

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
