//! Escalation on AWS, pointed at this instance (read from the instance
//! metadata service): in-process with the failover library's [`Mover`]
//! and the node's own IAM role, or by invoking the failover Lambda
//! function (the node then needs only `lambda:InvokeFunction`).

use tidepool_failover::{
    AwsClients, Metadata, ModeName, MoveOptions, Mover, Settings, Target, model::AddressState,
};

use super::{
    core::Action,
    escalate::{EscalateError, Outcome},
};
use crate::config::{AddressMode, EscalationConfig, EscalationVia};

pub struct AwsEscalator {
    via: Via,
    target: Target,
}

enum Via {
    InProcess(Box<Mover>),
    Lambda {
        client: aws_sdk_lambda::Client,
        function: String,
        mode: ModeName,
    },
}

fn aws(e: impl std::fmt::Display) -> EscalateError {
    EscalateError::Aws(e.to_string())
}

/// The `[escalation]` keys in the failover library's terms.
pub fn settings(cfg: &EscalationConfig) -> Settings {
    Settings {
        mode: match cfg.mode {
            AddressMode::Eip => Some(ModeName::Eip),
            AddressMode::Route53 => Some(ModeName::Route53),
            AddressMode::RouteTable => Some(ModeName::RouteTable),
            AddressMode::Command | AddressMode::None => None,
        },
        eip_allocation_id: cfg.eip_allocation_id.clone(),
        hosted_zone_id: cfg.hosted_zone_id.clone(),
        record_name: cfg.record_name.clone(),
        record_ttl: cfg.record_ttl,
        route_table_ids: (!cfg.route_table_ids.is_empty()).then(|| cfg.route_table_ids.clone()),
        vip_cidr: cfg.vip_cidr.clone(),
    }
}

fn holder(state: &AddressState) -> Option<String> {
    state.single_holder().map(|h| {
        h.instance_id
            .clone()
            .or_else(|| h.private_ip.map(|ip| ip.to_string()))
            .unwrap_or_default()
    })
}

impl AwsEscalator {
    pub async fn new(node: &str, cfg: &EscalationConfig) -> Result<AwsEscalator, EscalateError> {
        let mode = settings(cfg).mode_config().map_err(aws)?;
        let options = MoveOptions::default();
        let via = match cfg.via {
            EscalationVia::InProcess => {
                let clients = AwsClients::from_env(&options.retry).await;
                Via::InProcess(Box::new(Mover::new(mode, &clients, &options)))
            }
            EscalationVia::Lambda => {
                let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                Via::Lambda {
                    client: aws_sdk_lambda::Client::new(&sdk),
                    function: cfg.lambda_function.clone().unwrap_or_default(),
                    mode: mode.mode(),
                }
            }
        };
        let identity = Metadata::from_env().identity().await.map_err(|e| {
            EscalateError::Aws(format!(
                "cannot read this instance's identity from the metadata service: {e}"
            ))
        })?;
        Ok(AwsEscalator {
            via,
            target: identity.target(Some(node.to_string())),
        })
    }

    pub fn mode(&self) -> &'static str {
        match &self.via {
            Via::InProcess(m) => m.mode().as_str(),
            Via::Lambda { mode, .. } => mode.as_str(),
        }
    }

    /// Invokes the failover function with `action` for this instance; the
    /// function's environment holds the mode's parameters.
    async fn invoke(&self, action: &str) -> Result<Outcome, EscalateError> {
        let Via::Lambda {
            client,
            function,
            mode,
        } = &self.via
        else {
            unreachable!("invoke is only called via lambda")
        };
        let event = serde_json::json!({
            "action": action,
            "mode": mode.as_str(),
            "target": self.target,
        });
        let out = client
            .invoke()
            .function_name(function)
            .payload(aws_sdk_lambda::primitives::Blob::new(event.to_string()))
            .send()
            .await
            .map_err(|e| {
                EscalateError::Aws(format!(
                    "invoking {function}: {}",
                    aws_sdk_lambda::error::DisplayErrorContext(&e)
                ))
            })?;
        let answer: serde_json::Value = out
            .payload()
            .and_then(|p| serde_json::from_slice(p.as_ref()).ok())
            .unwrap_or_default();
        if let Some(err) = out.function_error() {
            return Err(EscalateError::Aws(format!(
                "{function} failed ({err}): {answer}"
            )));
        }
        if answer["ok"] != serde_json::Value::Bool(true) {
            return Err(EscalateError::Aws(format!(
                "{function}: {}",
                answer["error"].as_str().unwrap_or("no answer")
            )));
        }
        let after: Option<AddressState> = serde_json::from_value(answer["after"].clone()).ok();
        Ok(Outcome {
            holder: after.as_ref().and_then(holder),
            detail: format!("{action} via {function}: holds={}", answer["holds"]),
        })
    }

    /// Acquire, release, or verify and repair: each reads first and changes
    /// only what is wrong.
    pub async fn run(&self, action: Action) -> Result<Outcome, EscalateError> {
        let Via::InProcess(mover) = &self.via else {
            let name = match action {
                Action::Escalate { .. } => "escalate",
                Action::DeEscalate { .. } => "de_escalate",
                Action::Verify { .. } => "status",
            };
            let out = self.invoke(name).await?;
            if matches!(action, Action::Verify { .. }) && !out.detail.ends_with("holds=true") {
                tracing::warn!("the service address does not point here; repairing");
                return self.invoke("escalate").await;
            }
            return Ok(out);
        };
        match action {
            Action::Escalate { .. } => {
                let r = mover.acquire(&self.target).await.map_err(aws)?;
                Ok(Outcome {
                    holder: holder(&r.after),
                    detail: format!("acquired ({} change(s))", r.changes.len()),
                })
            }
            Action::DeEscalate { .. } => {
                let r = mover.release(&self.target).await.map_err(aws)?;
                Ok(Outcome {
                    holder: holder(&r.after),
                    detail: format!("released ({} change(s))", r.changes.len()),
                })
            }
            Action::Verify { .. } => {
                let v = mover.verify(&self.target).await.map_err(aws)?;
                if v.holds {
                    return Ok(Outcome {
                        holder: holder(&v.state),
                        detail: "verified: the address points here".into(),
                    });
                }
                tracing::warn!("the service address does not point here; repairing");
                let r = mover.acquire(&self.target).await.map_err(aws)?;
                Ok(Outcome {
                    holder: holder(&r.after),
                    detail: format!("repaired ({} change(s))", r.changes.len()),
                })
            }
        }
    }
}
