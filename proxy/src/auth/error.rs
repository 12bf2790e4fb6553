//! The one error type of client authentication.
//!
//! Authentication fails in two ways that a client must be told apart: the
//! client broke the protocol (SQLSTATE 08P01, its driver is at fault), or it
//! proved the wrong thing (28P01, the person or the config is at fault). A
//! third case is the operator's: the stored secret cannot serve the method
//! the rules ask for. PostgreSQL reports that to the client as a plain
//! password failure and explains only in its log; [`AuthError::client_message`]
//! does the same so that a probe learns nothing about stored secrets.

use thiserror::Error;

/// SQLSTATE `protocol_violation`.
pub const SQLSTATE_PROTOCOL_VIOLATION: &str = "08P01";
/// SQLSTATE `invalid_password`.
pub const SQLSTATE_INVALID_PASSWORD: &str = "28P01";

/// Why a client was not let in.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The client sent a message the exchange does not allow.
    #[error("malformed authentication message: {0}")]
    Protocol(String),
    /// The client's proof or password does not match the stored secret.
    #[error("password authentication failed")]
    InvalidPassword,
    /// The stored secret cannot be used with the requested method, so no
    /// password could ever succeed; the text says what to change.
    #[error("{0}")]
    UnusableSecret(String),
}

impl AuthError {
    pub(crate) fn protocol(detail: impl Into<String>) -> Self {
        Self::Protocol(detail.into())
    }

    /// The SQLSTATE for the ErrorResponse sent to the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Protocol(_) => SQLSTATE_PROTOCOL_VIOLATION,
            Self::InvalidPassword | Self::UnusableSecret(_) => SQLSTATE_INVALID_PASSWORD,
        }
    }

    /// The message for the client's ErrorResponse. Credential failures read
    /// exactly like PostgreSQL's, whatever the cause; log the `Display` form
    /// for the operator.
    pub fn client_message(&self, user: &str) -> String {
        match self {
            Self::Protocol(_) => self.to_string(),
            Self::InvalidPassword | Self::UnusableSecret(_) => {
                format!("password authentication failed for user \"{user}\"")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_errors_are_protocol_violations() {
        let err = AuthError::protocol("garbage");
        assert_eq!(err.sqlstate(), "08P01");
        assert!(err.client_message("app").contains("garbage"));
    }

    #[test]
    fn credential_failures_hide_the_cause_from_the_client() {
        let unusable = AuthError::UnusableSecret("stored secret is md5".into());
        assert_eq!(unusable.sqlstate(), "28P01");
        assert_eq!(AuthError::InvalidPassword.sqlstate(), "28P01");
        let expected = "password authentication failed for user \"app\"";
        assert_eq!(unusable.client_message("app"), expected);
        assert_eq!(AuthError::InvalidPassword.client_message("app"), expected);
    }
}
