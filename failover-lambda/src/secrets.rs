//! Passwords kept in AWS Secrets Manager.
//!
//! A user's `password_secret` names a secret instead of putting the
//! password in the config file, so the password can be rotated without
//! touching tidepool's configuration. The secret's text is either the
//! password itself or, as RDS-managed master secrets and the rotation
//! Lambda templates keep it, JSON such as
//! `{"username": "app", "password": "…", "engine": "postgres", …}`.
//!
//! [`read_password`] reads the version labelled `AWSCURRENT`, naming the
//! label explicitly: a rotation first stores the new password as
//! `AWSPENDING` and moves `AWSCURRENT` only once the database accepts it,
//! so a pending password is never used early. Callers read again after a
//! login fails or periodically; [`SecretPassword::version_id`] tells
//! whether the password changed.
//!
//! Errors never carry the secret's text, only where it went wrong.

use serde_json::Value;

use crate::clients::region_of;
use crate::error::{Error, ResourceKind, Subject};
use crate::retry::{Caller, RetryPolicy};

/// The version label of the password in use.
pub const CURRENT_STAGE: &str = "AWSCURRENT";

/// What a secret holds for logging in.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPassword {
    /// The JSON form's `username`, when it has one.
    pub username: Option<String>,
    pub password: String,
    /// The secret version read; a new one after each rotation.
    pub version_id: Option<String>,
}

impl std::fmt::Debug for SecretPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretPassword")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("version_id", &self.version_id)
            .finish()
    }
}

/// Why a secret's text is not a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("it is empty")]
    Empty,
    /// The text starts with `{` but is not a JSON object. Only the
    /// position is kept: serde's messages can quote the text.
    #[error("it starts with '{{' but is not valid JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("its JSON has no \"password\" string")]
    NoPassword,
    #[error("its JSON \"username\" is not a string")]
    UsernameNotString,
}

/// Why no password could be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Secrets Manager refused or could not be reached.
    #[error(transparent)]
    Aws(#[from] Error),

    /// The secret holds binary data only.
    #[error(
        "secret {arn} has no text (SecretString): store the password as text, \
         or as JSON {{\"username\": \"…\", \"password\": \"…\"}}"
    )]
    NotText { arn: String },

    /// The secret's text is not a usable password.
    #[error(
        "secret {arn} does not hold a password: {problem}; store the password as text, \
         or as JSON {{\"username\": \"…\", \"password\": \"…\"}}"
    )]
    Format {
        arn: String,
        #[source]
        problem: FormatError,
    },
}

/// Reads the current password of the secret `arn` (an ARN, or a name in
/// the client's region), retrying throttling and network errors under the
/// default [`RetryPolicy`].
pub async fn read_password(
    client: &aws_sdk_secretsmanager::Client,
    arn: &str,
) -> Result<SecretPassword, SecretError> {
    let caller = Caller::new(RetryPolicy::default(), region_of(client.config().region()));
    let subject = Subject::new(ResourceKind::Secret, arn);
    let out = caller
        .call("secretsmanager:GetSecretValue", &subject, || {
            client
                .get_secret_value()
                .secret_id(arn)
                .version_stage(CURRENT_STAGE)
                .send()
        })
        .await?;
    let text = out.secret_string().ok_or_else(|| SecretError::NotText {
        arn: arn.to_owned(),
    })?;
    let mut secret = parse_secret_string(text).map_err(|problem| SecretError::Format {
        arn: arn.to_owned(),
        problem,
    })?;
    secret.version_id = out.version_id().map(str::to_owned);
    Ok(secret)
}

/// The password (and username) in a secret's text.
///
/// Text starting with `{` (after white space) must be a JSON object with a
/// non-empty string `password` and, optionally, a string `username`;
/// other fields are ignored. Any other text is the password itself, less
/// one trailing line end (what `--secret-string file://…` leaves).
pub fn parse_secret_string(text: &str) -> Result<SecretPassword, FormatError> {
    if !text.trim_start().starts_with('{') {
        let password = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(text);
        if password.trim().is_empty() {
            return Err(FormatError::Empty);
        }
        return Ok(SecretPassword {
            username: None,
            password: password.to_owned(),
            version_id: None,
        });
    }
    let value: Value = serde_json::from_str(text).map_err(|e| FormatError::NotJson {
        line: e.line(),
        column: e.column(),
    })?;
    let password = match value.get("password") {
        Some(Value::String(p)) if p.is_empty() => return Err(FormatError::Empty),
        Some(Value::String(p)) => p.clone(),
        _ => return Err(FormatError::NoPassword),
    };
    let username = match value.get("username") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => Some(u.clone()),
        Some(_) => return Err(FormatError::UsernameNotString),
    };
    Ok(SecretPassword {
        username,
        password,
        version_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Option<String>, String) {
        let s = parse_secret_string(text).unwrap();
        (s.username, s.password)
    }

    #[test]
    fn plain_text_is_the_password() {
        assert_eq!(parsed("s3cret pw"), (None, "s3cret pw".to_owned()));
        assert_eq!(parsed("  spaced  "), (None, "  spaced  ".to_owned()));
    }

    #[test]
    fn one_trailing_line_end_is_not_part_of_the_password() {
        assert_eq!(parsed("pw\n"), (None, "pw".to_owned()));
        assert_eq!(parsed("pw\r\n"), (None, "pw".to_owned()));
        assert_eq!(parsed("pw\n\n"), (None, "pw\n".to_owned()));
    }

    #[test]
    fn rds_managed_json_gives_username_and_password() {
        let text =
            r#"{"username":"app","password":"p\"w{}","engine":"postgres","host":"db","port":5432}"#;
        assert_eq!(parsed(text), (Some("app".to_owned()), "p\"w{}".to_owned()));
    }

    #[test]
    fn json_without_username_is_fine() {
        assert_eq!(
            parsed("  {\"password\": \"only\"}\n"),
            (None, "only".to_owned())
        );
        assert_eq!(
            parsed(r#"{"password":"pw","username":null}"#),
            (None, "pw".to_owned())
        );
    }

    #[test]
    fn unusable_texts_say_why_without_quoting_the_secret() {
        assert_eq!(parse_secret_string(""), Err(FormatError::Empty));
        assert_eq!(parse_secret_string(" \n"), Err(FormatError::Empty));
        assert_eq!(
            parse_secret_string(r#"{"password":""}"#),
            Err(FormatError::Empty)
        );
        assert_eq!(
            parse_secret_string(r#"{"user":"app","pass":"x"}"#),
            Err(FormatError::NoPassword)
        );
        assert_eq!(
            parse_secret_string(r#"{"password":12345}"#),
            Err(FormatError::NoPassword)
        );
        assert_eq!(
            parse_secret_string(r#"{"password":"pw","username":7}"#),
            Err(FormatError::UsernameNotString)
        );
        let err = parse_secret_string("{hunter2").unwrap_err();
        assert!(
            matches!(err, FormatError::NotJson { line: 1, .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let s = parse_secret_string("hunter2").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
