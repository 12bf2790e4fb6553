//! Runs one event: the same code under the Lambda runtime and from a shell.
//!
//! The handler never fails as an invocation: every outcome, including a
//! malformed event or an AWS error, is an [`Answer`] with `ok` and an
//! `error` that says what to fix. That keeps the operator's view the same
//! whether they used `aws lambda invoke` or `--event`.

use std::time::Instant;

use serde_json::Value;

use crate::clients::AwsClients;
use crate::config::{MoveOptions, Settings};
use crate::error::{Error, Result};
use crate::event::{Action, Answer, Event};
use crate::imds::Metadata;
use crate::model::{MoveReport, Target};
use crate::mover::Mover;

/// Serves events with the function's clients and environment settings.
#[derive(Debug, Clone)]
pub struct Handler {
    clients: AwsClients,
    settings: Settings,
    options: MoveOptions,
    /// Where to learn "this instance" when an event names no target; `None`
    /// inside Lambda, which has no instance metadata.
    metadata: Option<Metadata>,
}

impl Handler {
    pub fn new(clients: AwsClients, settings: Settings, options: MoveOptions) -> Handler {
        Handler {
            clients,
            settings,
            options,
            metadata: None,
        }
    }

    /// Lets escalate and de_escalate default to this instance.
    pub fn with_metadata(mut self, metadata: Metadata) -> Handler {
        self.metadata = Some(metadata);
        self
    }

    /// Handles one event given as JSON.
    pub async fn handle(&self, event: Value) -> Answer {
        let started = Instant::now();
        let mut answer = Answer::empty();
        match serde_json::from_value::<Event>(event) {
            Ok(event) => {
                answer.action = Some(event.action);
                answer.dry_run = event.dry_run;
                if let Err(e) = self.execute(&event, &mut answer).await {
                    tracing::error!(error = %e, action = ?event.action, "event failed");
                    answer.error = Some(e.to_string());
                }
            }
            Err(e) => {
                answer.error = Some(format!(
                    "invalid event: {e}; expected {{\"action\": \"escalate\"|\"de_escalate\"|\"switchover\"|\"status\", \
                     \"mode\": \"eip\"|\"route53\"|\"route_table\", \"target\": {{\"instance_id\", \"eni_id\", \"private_ip\", \"node\"}}, \
                     \"dry_run\": bool}}"
                ));
            }
        }
        answer.ok = answer.error.is_none();
        answer.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        answer
    }

    async fn execute(&self, event: &Event, answer: &mut Answer) -> Result<()> {
        let config = self
            .settings
            .overridden_by(&event.overrides())
            .mode_config()?;
        answer.mode = Some(config.mode());
        let mover = Mover::new(config, &self.clients, &self.options);
        match event.action {
            Action::Escalate | Action::DeEscalate => {
                let target = self.target_or_self(event).await?;
                answer.target = Some(target.clone());
                let report = match (event.action, event.dry_run) {
                    (Action::Escalate, false) => mover.acquire(&target).await?,
                    (Action::Escalate, true) => mover.plan_acquire(&target).await?,
                    (_, false) => mover.release(&target).await?,
                    (_, true) => mover.plan_release(&target).await?,
                };
                fill(answer, report);
            }
            Action::Switchover => {
                let target = event.target.clone().ok_or_else(|| {
                    Error::Target(
                        "switchover needs \"target\" with the node that becomes active".to_owned(),
                    )
                })?;
                let node = target.node.clone().ok_or_else(|| {
                    Error::Target(
                        "switchover needs target.node, the tidepool node that becomes active, \
                         so the watchdog can agree with the move"
                            .to_owned(),
                    )
                })?;
                answer.target = Some(target.clone());
                if event.dry_run {
                    fill(answer, mover.plan_acquire(&target).await?);
                } else {
                    fill(answer, mover.acquire(&target).await?);
                    let verified = mover.verify(&target).await?;
                    answer.holds = Some(verified.holds);
                    answer.after = Some(verified.state);
                    if !verified.holds {
                        return Err(Error::NotConfirmed {
                            resource: mover.mode().to_string(),
                            waited: std::time::Duration::ZERO,
                            detail: format!(
                                "{} does not hold the address after the move",
                                target.label()
                            ),
                        });
                    }
                    answer.active_node = Some(node);
                }
            }
            Action::Status => {
                if let Some(target) = &event.target {
                    let verified = mover.verify(target).await?;
                    answer.target = Some(target.clone());
                    answer.holds = Some(verified.holds);
                    answer.before = Some(verified.state.clone());
                    answer.after = Some(verified.state);
                } else {
                    let state = mover.holder().await?;
                    answer.before = Some(state.clone());
                    answer.after = Some(state);
                }
            }
        }
        Ok(())
    }

    /// The event's target, or this instance from metadata.
    async fn target_or_self(&self, event: &Event) -> Result<Target> {
        if let Some(target) = &event.target {
            return Ok(target.clone());
        }
        let Some(metadata) = &self.metadata else {
            return Err(Error::Target(
                "the event names no target and there is no instance metadata here (inside Lambda): \
                 give \"target\": {\"instance_id\": …, \"private_ip\": …, \"node\": …}"
                    .to_owned(),
            ));
        };
        let identity = metadata.identity().await?;
        Ok(identity.target(None))
    }
}

fn fill(answer: &mut Answer, report: MoveReport) {
    answer.changed = report.changed();
    answer.before = Some(report.before);
    answer.after = Some(report.after);
    answer.changes = report.changes;
}
