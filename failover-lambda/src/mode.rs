//! The loop every address mode follows, written once: read the current
//! state, plan the changes that would make it right (a pure function of the
//! state and the target), make only those, then read again until the plan
//! comes back empty. An empty first plan means no mutating call at all,
//! which is what makes every operation safe to repeat. The modes
//! (`eip`, `route53`, `route_table`) implement [`Mode`]; `mover` picks one.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::{AddressState, Change, MoveReport, Target, Verification};

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

pub(crate) async fn verify<M: Mode>(mode: &M, target: &Target) -> Result<Verification> {
    let target = mode.prepare(target).await?;
    let state = mode.read().await?;
    Ok(Verification {
        holds: mode.holds(&state, &target),
        state: mode.describe(&state),
    })
}
