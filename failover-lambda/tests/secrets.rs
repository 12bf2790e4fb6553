//! Passwords read from Secrets Manager (moto): JSON and plain secrets, a
//! rotation as the rotation Lambdas make it, and errors that say what to fix.

mod common;

use common::{Moto, REGION};
use tidepool_failover::secrets::{FormatError, SecretError};
use tidepool_failover::{Error, read_password};

#[tokio::test]
async fn a_rotated_password_is_read_only_once_it_is_current() {
    let moto = Moto::start().await;
    let sm = moto.clients().await.secrets;
    let created = sm
        .create_secret()
        .name("tidepool/app")
        .secret_string(r#"{"username":"app","password":"first-pw","engine":"postgres"}"#)
        .send()
        .await
        .expect("create_secret");
    let arn = created.arn().expect("secret arn").to_owned();
    let first_version = created.version_id().expect("version id").to_owned();

    let first = read_password(&sm, &arn).await.unwrap();
    assert_eq!(first.username.as_deref(), Some("app"));
    assert_eq!(first.password, "first-pw");
    assert_eq!(first.version_id.as_deref(), Some(first_version.as_str()));

    // A rotation Lambda's createSecret step: the new password, pending.
    let pending = sm
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(r#"{"username":"app","password":"second-pw"}"#)
        .version_stages("AWSPENDING")
        .send()
        .await
        .expect("put_secret_value");
    let pending_version = pending.version_id().expect("version id").to_owned();
    let still = read_password(&sm, &arn).await.unwrap();
    assert_eq!(still.password, "first-pw", "a pending password is not used");

    // Its finishSecret step: the pending version becomes current.
    sm.update_secret_version_stage()
        .secret_id(&arn)
        .version_stage("AWSCURRENT")
        .move_to_version_id(&pending_version)
        .remove_from_version_id(&first_version)
        .send()
        .await
        .expect("update_secret_version_stage");
    let second = read_password(&sm, &arn).await.unwrap();
    assert_eq!(second.password, "second-pw");
    assert_eq!(second.username.as_deref(), Some("app"));
    assert_eq!(second.version_id.as_deref(), Some(pending_version.as_str()));
}

#[tokio::test]
async fn plain_secrets_read_by_name_and_errors_name_the_secret() {
    let moto = Moto::start().await;
    let sm = moto.clients().await.secrets;
    sm.create_secret()
        .name("tidepool/plain")
        .secret_string("plain-pw\n")
        .send()
        .await
        .expect("create_secret");
    let plain = read_password(&sm, "tidepool/plain").await.unwrap();
    assert_eq!(plain.password, "plain-pw");
    assert_eq!(plain.username, None);

    sm.put_secret_value()
        .secret_id("tidepool/plain")
        .secret_string("changed-pw")
        .send()
        .await
        .expect("put_secret_value");
    let changed = read_password(&sm, "tidepool/plain").await.unwrap();
    assert_eq!(changed.password, "changed-pw");
    assert_ne!(changed.version_id, plain.version_id);

    let missing =
        format!("arn:aws:secretsmanager:{REGION}:123456789012:secret:tidepool/nope-AbCdEf");
    let err = read_password(&sm, &missing).await.unwrap_err();
    match &err {
        SecretError::Aws(e @ Error::NotFound { .. }) => {
            assert_eq!(e.code(), Some("ResourceNotFoundException"));
        }
        other => panic!("expected a not-found error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&missing) && text.contains(REGION) && text.contains("AWS_REGION"),
        "{text}"
    );

    sm.create_secret()
        .name("tidepool/broken")
        .secret_string(r#"{"user":"app","pass":"x"}"#)
        .send()
        .await
        .expect("create_secret");
    let err = read_password(&sm, "tidepool/broken").await.unwrap_err();
    assert!(
        matches!(
            &err,
            SecretError::Format {
                problem: FormatError::NoPassword,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("tidepool/broken"), "{err}");
}
