//! MD5 challenge-response (AuthenticationMD5Password).
//!
//! The server sends four random salt bytes; the client answers
//! `"md5" + hex(md5(hex(md5(password + user)) + salt))`. The inner hash is
//! exactly what PostgreSQL stores, so a stored md5 hash is enough to check
//! an answer — and enough to give one, which is how tidepool can log in to
//! a backend with only the hash from its config.

use md5::{Digest, Md5};
use rand::Rng;
use subtle::ConstantTimeEq;

use super::error::AuthError;
use super::secret::{Secret, hex, md5_hash, reject_empty};

/// A fresh salt for one AuthenticationMD5Password message. Never reuse
/// one: a recorded answer replays against the same salt.
pub fn md5_salt() -> [u8; 4] {
    let mut salt = [0u8; 4];
    rand::rng().fill_bytes(&mut salt);
    salt
}

/// The answer to an md5 challenge, given either the stored md5 hash or
/// the plaintext password (as [`Secret::parse`] tells them apart).
pub fn md5_challenge_response(stored_md5_or_plain: &str, user: &str, salt: [u8; 4]) -> String {
    match Secret::parse(stored_md5_or_plain) {
        Secret::Md5(hash) => salted_response(&hash, salt),
        _ => salted_response(&md5_hash(user, stored_md5_or_plain), salt),
    }
}

/// Checks a client's answer to the challenge with `salt`, in constant
/// time. Only a plaintext password or an md5 hash can check it: a SCRAM
/// verifier does not hold the md5 hash, which is why PostgreSQL switches
/// an `md5` rule to SCRAM for such users (see `hba::effective_method`).
pub fn verify_md5_response(
    secret: &Secret,
    user: &str,
    salt: [u8; 4],
    response: &str,
) -> Result<(), AuthError> {
    let expected = match secret {
        Secret::Plain(password) => {
            reject_empty(password)?;
            salted_response(&md5_hash(user, password), salt)
        }
        Secret::Md5(hash) => salted_response(hash, salt),
        Secret::Scram(_) => {
            return Err(AuthError::UnusableSecret(
                "md5 authentication is impossible: the user's stored secret is a \
                 SCRAM-SHA-256 verifier; use method scram-sha-256 (or md5, which \
                 then runs SCRAM) for this user"
                    .into(),
            ));
        }
    };
    if bool::from(expected.as_bytes().ct_eq(response.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::InvalidPassword)
    }
}

/// `"md5" + hex(md5(<32 hex digits of stored_hash> + salt))`.
fn salted_response(stored_hash: &str, salt: [u8; 4]) -> String {
    let inner = stored_hash.strip_prefix("md5").unwrap_or(stored_hash);
    let mut hasher = Md5::new();
    hasher.update(inner.as_bytes());
    hasher.update(salt);
    format!("md5{}", hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::ScramVerifier;

    const SALT: [u8; 4] = [0x01, 0x02, 0xfe, 0xff];

    fn client_answer(user: &str, password: &str, salt: [u8; 4]) -> String {
        postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt)
    }

    #[test]
    fn response_from_plaintext_matches_postgres_protocol() {
        let ours = md5_challenge_response("secret", "app", SALT);
        assert_eq!(ours, client_answer("app", "secret", SALT));
    }

    #[test]
    fn response_from_stored_hash_matches_postgres_protocol() {
        let ours = md5_challenge_response(&md5_hash("app", "secret"), "app", SALT);
        assert_eq!(ours, client_answer("app", "secret", SALT));
    }

    #[test]
    fn right_answer_verifies_with_plain_and_md5_secrets() {
        let answer = client_answer("app", "secret", SALT);
        for secret in [
            Secret::Plain("secret".into()),
            Secret::Md5(md5_hash("app", "secret")),
        ] {
            assert_eq!(verify_md5_response(&secret, "app", SALT, &answer), Ok(()));
        }
    }

    #[test]
    fn wrong_password_user_or_salt_fails() {
        let secret = Secret::Md5(md5_hash("app", "secret"));
        for answer in [
            client_answer("app", "wrong", SALT),
            client_answer("other", "secret", SALT),
            client_answer("app", "secret", [0; 4]),
            String::new(),
        ] {
            assert_eq!(
                verify_md5_response(&secret, "app", SALT, &answer),
                Err(AuthError::InvalidPassword)
            );
        }
    }

    #[test]
    fn scram_secret_cannot_serve_md5() {
        let secret = Secret::Scram(ScramVerifier::from_password("secret", b"salt", 1));
        let answer = client_answer("app", "secret", SALT);
        let err = verify_md5_response(&secret, "app", SALT, &answer).unwrap_err();
        assert!(matches!(err, AuthError::UnusableSecret(_)));
        assert!(err.to_string().contains("md5 authentication is impossible"));
    }

    #[test]
    fn empty_stored_password_never_verifies() {
        let answer = client_answer("app", "", SALT);
        let err = verify_md5_response(&Secret::Plain(String::new()), "app", SALT, &answer);
        assert!(matches!(err, Err(AuthError::UnusableSecret(_))));
    }

    #[test]
    fn salts_differ() {
        assert_ne!(md5_salt(), md5_salt());
    }
}
