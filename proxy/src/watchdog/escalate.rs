//! Runs the state machine's escalation actions: move the service address
//! here, let it go, or check it. Every action is idempotent, so a retry or
//! a level-triggered re-verification is always safe.

use std::{process::Stdio, time::Duration};

use tokio::process::Command;

use super::core::Action;
use crate::config::{AddressMode, EscalationConfig};

#[derive(Debug, thiserror::Error)]
pub enum EscalateError {
    #[error("`{command}` failed to start: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}: {stderr}")]
    Exit {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{action} took longer than escalation.action_timeout ({timeout:?})")]
    Timeout {
        action: &'static str,
        timeout: Duration,
    },
    #[error("{0}")]
    Aws(String),
}

/// What an action found, for the admin surface.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Who holds the address afterwards, when the mode can tell.
    pub holder: Option<String>,
    pub detail: String,
}

pub fn action_name(a: &Action) -> &'static str {
    match a {
        Action::Escalate { .. } => "escalate",
        Action::DeEscalate { .. } => "de_escalate",
        Action::Verify { .. } => "verify",
    }
}

fn term_of(a: &Action) -> u64 {
    match a {
        Action::Escalate { term } | Action::DeEscalate { term } | Action::Verify { term } => *term,
    }
}

/// How this node moves the address.
pub enum Escalator {
    /// Elect only.
    None,
    /// Shell commands (on-premises VIPs, tests).
    Command {
        node: String,
        escalate: String,
        de_escalate: Option<String>,
    },
    /// An AWS address, moved in-process or through the Lambda function.
    Aws(Box<super::aws::AwsEscalator>),
}

impl Escalator {
    /// The escalator for `cfg` (none without `[escalation]`).
    pub async fn from_config(
        node: &str,
        cfg: Option<&EscalationConfig>,
    ) -> Result<Escalator, EscalateError> {
        let Some(cfg) = cfg else {
            return Ok(Escalator::None);
        };
        Ok(match cfg.mode {
            AddressMode::None => Escalator::None,
            AddressMode::Command => Escalator::Command {
                node: node.to_string(),
                escalate: cfg.escalate_command.clone().unwrap_or_default(),
                de_escalate: cfg.de_escalate_command.clone(),
            },
            AddressMode::Eip | AddressMode::Route53 | AddressMode::RouteTable => {
                Escalator::Aws(Box::new(super::aws::AwsEscalator::new(node, cfg).await?))
            }
        })
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Escalator::None => "none",
            Escalator::Command { .. } => "command",
            Escalator::Aws(a) => a.mode(),
        }
    }

    /// Runs `action`, bounded by `timeout`.
    pub async fn run(&self, action: Action, timeout: Duration) -> Result<Outcome, EscalateError> {
        let name = action_name(&action);
        match tokio::time::timeout(timeout, self.run_unbounded(action)).await {
            Ok(r) => r,
            Err(_) => Err(EscalateError::Timeout {
                action: name,
                timeout,
            }),
        }
    }

    async fn run_unbounded(&self, action: Action) -> Result<Outcome, EscalateError> {
        match self {
            Escalator::Aws(a) => a.run(action).await,
            Escalator::None => Ok(Outcome {
                holder: None,
                detail: "address mode none: nothing to move".into(),
            }),
            Escalator::Command {
                node,
                escalate,
                de_escalate,
            } => {
                let cmd = match action {
                    Action::DeEscalate { .. } => match de_escalate {
                        Some(c) => c,
                        None => {
                            return Ok(Outcome {
                                holder: None,
                                detail: "no de_escalate_command".into(),
                            });
                        }
                    },
                    // Verification re-runs the (idempotent) escalate command.
                    _ => escalate,
                };
                run_command(cmd, node, &action).await?;
                let holder = (!matches!(action, Action::DeEscalate { .. })).then(|| node.clone());
                Ok(Outcome {
                    holder,
                    detail: format!("{} ran", action_name(&action)),
                })
            }
        }
    }
}

async fn run_command(cmd: &str, node: &str, action: &Action) -> Result<(), EscalateError> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TIDEPOOL_NODE", node)
        .env("TIDEPOOL_ACTION", action_name(action))
        .env("TIDEPOOL_TERM", term_of(action).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| EscalateError::Spawn {
            command: cmd.to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(EscalateError::Exit {
            command: cmd.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_get_the_node_action_and_term() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moves");
        let e = Escalator::Command {
            node: "tp-a".into(),
            escalate: format!(
                "echo $TIDEPOOL_ACTION $TIDEPOOL_NODE $TIDEPOOL_TERM >> {}",
                log.display()
            ),
            de_escalate: Some(format!("echo down $TIDEPOOL_NODE >> {}", log.display())),
        };
        let t = Duration::from_secs(5);
        e.run(Action::Escalate { term: 4 }, t).await.unwrap();
        e.run(Action::DeEscalate { term: 4 }, t).await.unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "escalate tp-a 4\ndown tp-a\n");
    }

    #[tokio::test]
    async fn a_failing_or_slow_command_is_an_error() {
        let e = Escalator::Command {
            node: "a".into(),
            escalate: "echo nope >&2; exit 3".into(),
            de_escalate: Some("sleep 5".into()),
        };
        let err = e
            .run(Action::Escalate { term: 1 }, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = e
            .run(Action::DeEscalate { term: 1 }, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, EscalateError::Timeout { .. }), "{err}");
    }
}
