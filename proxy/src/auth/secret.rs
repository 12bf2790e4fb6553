//! Stored user secrets: what a `[[users]] password = "…"` value holds.
//!
//! The value is read the way PostgreSQL reads `pg_authid.rolpassword`, so a
//! verifier copied out of a real server works unchanged: a well-formed
//! `SCRAM-SHA-256$…` string is a SCRAM verifier, `md5` followed by 32
//! lowercase hex digits is an md5 hash, anything else is the plaintext
//! password itself.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use super::error::AuthError;

/// PBKDF2 rounds for verifiers tidepool creates; PostgreSQL's default
/// `scram_iterations`, so a verifier costs the same to check here as there.
pub const SCRAM_DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length for verifiers tidepool creates; PostgreSQL's length.
pub const SCRAM_DEFAULT_SALT_LEN: usize = 16;

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";
const MD5_PREFIX: &str = "md5";
const MD5_HEX_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A user's stored secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself. Serves every method.
    Plain(String),
    /// `"md5"` + hex(md5(password + user)): serves md5 and cleartext
    /// password authentication, never SCRAM.
    Md5(String),
    /// A SCRAM-SHA-256 verifier: serves SCRAM and cleartext password
    /// authentication, never md5.
    Scram(ScramVerifier),
}

impl Secret {
    /// Reads a stored secret as PostgreSQL does: a string that is not a
    /// well-formed verifier or md5 hash is a plaintext password. A config
    /// checker that wants to flag a mistyped verifier can parse it with
    /// [`ScramVerifier::from_str`] to get the reason.
    pub fn parse(text: &str) -> Secret {
        if text.starts_with(SCRAM_PREFIX)
            && let Ok(verifier) = text.parse()
        {
            return Secret::Scram(verifier);
        }
        if is_md5_hash(text) {
            return Secret::Md5(text.to_owned());
        }
        Secret::Plain(text.to_owned())
    }

    /// What kind of secret this is, in words for logs and warnings.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Plain(_) => "plaintext password",
            Secret::Md5(_) => "md5 hash",
            Secret::Scram(_) => "SCRAM-SHA-256 verifier",
        }
    }

    /// The verifier a SCRAM exchange checks against. A plaintext password
    /// gets a fresh random salt each time, so no two exchanges with the same
    /// user share one; an md5 hash cannot yield a verifier.
    pub fn scram_verifier(&self) -> Result<ScramVerifier, AuthError> {
        match self {
            Secret::Scram(verifier) => Ok(verifier.clone()),
            Secret::Plain(password) => {
                reject_empty(password)?;
                Ok(ScramVerifier::generate(password))
            }
            Secret::Md5(_) => Err(AuthError::UnusableSecret(
                "the user's stored secret is an md5 hash, which cannot serve \
                 SCRAM-SHA-256 authentication; store the plaintext password or \
                 a SCRAM-SHA-256 verifier, or allow md5 for this user"
                    .into(),
            )),
        }
    }

    /// Checks a password a client sent in cleartext (method `password`),
    /// against any kind of secret, in constant time.
    pub fn verify_password(&self, user: &str, password: &str) -> Result<(), AuthError> {
        let matches = match self {
            Secret::Plain(stored) => {
                reject_empty(stored)?;
                stored.as_bytes().ct_eq(password.as_bytes())
            }
            Secret::Md5(stored) => stored.as_bytes().ct_eq(md5_hash(user, password).as_bytes()),
            Secret::Scram(verifier) => {
                let candidate =
                    ScramVerifier::from_password(password, &verifier.salt, verifier.iterations);
                candidate.server_key.ct_eq(&verifier.server_key)
            }
        };
        if bool::from(matches) {
            Ok(())
        } else {
            Err(AuthError::InvalidPassword)
        }
    }
}

/// Redacted: a secret must never reach a log through `{:?}`.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, redacted)", self.kind())
    }
}

/// PostgreSQL keeps users with an empty password out whatever the method;
/// so does tidepool, rather than let an unset value mean "no password".
pub(crate) fn reject_empty(password: &str) -> Result<(), AuthError> {
    if password.is_empty() {
        Err(AuthError::UnusableSecret(
            "the user's stored password is empty; set a password".into(),
        ))
    } else {
        Ok(())
    }
}

fn is_md5_hash(text: &str) -> bool {
    text.strip_prefix(MD5_PREFIX).is_some_and(|hex| {
        hex.len() == MD5_HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The md5 form PostgreSQL stores: `"md5"` + hex(md5(password + user)).
pub fn md5_hash(user: &str, password: &str) -> String {
    let mut hasher = Md5::new();
    hasher.update(password.as_bytes());
    hasher.update(user.as_bytes());
    format!("{MD5_PREFIX}{}", hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// A SCRAM-SHA-256 verifier (RFC 5802 section 3): enough to check a
/// client's proof and to prove the server knows the password, without
/// holding the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ScramVerifier {
    /// Derives the verifier for `password`. The password goes through
    /// SASLprep first, and is used as is when SASLprep refuses it (say, it
    /// holds a prohibited character): what PostgreSQL and libpq do, so
    /// verifiers agree with theirs for every password.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let prepared = stringprep::saslprep(password);
        let prepared = match &prepared {
            Ok(normalized) => normalized.as_bytes(),
            Err(_) => password.as_bytes(),
        };
        let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(prepared, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// Derives a verifier with a random salt and the default round count:
    /// what a CLI prints for a user to paste into the config.
    pub fn generate(password: &str) -> Self {
        let mut salt = [0u8; SCRAM_DEFAULT_SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        Self::from_password(password, &salt, SCRAM_DEFAULT_ITERATIONS)
    }

    /// PBKDF2 rounds.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt, raw.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// H(ClientKey): checks the client's proof.
    pub fn stored_key(&self) -> &[u8; 32] {
        &self.stored_key
    }

    /// Signs the server's final message, proving the server knows the
    /// password too.
    pub fn server_key(&self) -> &[u8; 32] {
        &self.server_key
    }
}

/// Redacted: the keys are as good as the password to anyone who can
/// impersonate the server.
impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// PostgreSQL's `pg_authid` form:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64.
impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCRAM_PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

/// Why a string is not a SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "not a SCRAM-SHA-256 verifier ({0}); expected \
     SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
)]
pub struct VerifierParseError(&'static str);

impl FromStr for ScramVerifier {
    type Err = VerifierParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = text
            .strip_prefix(SCRAM_PREFIX)
            .ok_or(VerifierParseError("missing the SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(VerifierParseError("missing '$' before the keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(VerifierParseError(
            "missing ':' between iterations and salt",
        ))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(VerifierParseError("missing ':' between the two keys"))?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or(VerifierParseError("iterations must be a positive integer"))?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| VerifierParseError("the salt is not base64"))?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: decode_key(stored_key, "StoredKey is not 32 bytes of base64")?,
            server_key: decode_key(server_key, "ServerKey is not 32 bytes of base64")?,
        })
    }
}

fn decode_key(text: &str, problem: &'static str) -> Result<[u8; 32], VerifierParseError> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(VerifierParseError(problem))
}

pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: [u8; 16] = *b"0123456789abcdef";

    #[test]
    fn parse_recognises_scram_md5_and_plaintext() {
        let verifier = ScramVerifier::from_password("secret", &SALT, 4096).to_string();
        assert!(matches!(Secret::parse(&verifier), Secret::Scram(_)));
        let md5 = md5_hash("app", "secret");
        assert_eq!(Secret::parse(&md5), Secret::Md5(md5.clone()));
        assert_eq!(Secret::parse("hunter2"), Secret::Plain("hunter2".into()));
    }

    #[test]
    fn malformed_verifiers_and_hashes_are_plaintext_like_postgresql() {
        for text in [
            "SCRAM-SHA-256$4096:c2FsdA==$short:key",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$",
            "md5ABCDEF0123456789abcdef0123456789",
            "md5abc",
        ] {
            assert_eq!(Secret::parse(text), Secret::Plain(text.into()), "{text}");
        }
    }

    #[test]
    fn verifier_parse_errors_say_what_is_wrong() {
        let err = "SCRAM-SHA-256$abc:c2FsdA==$x:y"
            .parse::<ScramVerifier>()
            .unwrap_err();
        assert!(err.to_string().contains("iterations"), "{err}");
        let err = "SCRAM-SHA-256$4096:c2FsdA==$x:y"
            .parse::<ScramVerifier>()
            .unwrap_err();
        assert!(err.to_string().contains("StoredKey"), "{err}");
    }

    #[test]
    fn verifier_round_trips_through_its_text_form() {
        let verifier = ScramVerifier::from_password("secret", &SALT, 10_000);
        let parsed: ScramVerifier = verifier.to_string().parse().unwrap();
        assert_eq!(parsed, verifier);
        assert_eq!(parsed.iterations(), 10_000);
        assert_eq!(parsed.salt(), &SALT);
    }

    #[test]
    fn verifier_matches_postgres_protocol_for_the_same_password_and_salt() {
        // postgres-protocol salts randomly; re-derive with its salt and
        // compare the whole string.
        for password in ["secret", "pässwörd", "IX", "a\u{00A0}b", "\u{0007}bell"] {
            let theirs = postgres_protocol::password::scram_sha_256(password.as_bytes());
            let parsed: ScramVerifier = theirs.parse().unwrap();
            let ours = ScramVerifier::from_password(password, parsed.salt(), parsed.iterations());
            assert_eq!(ours.to_string(), theirs, "password {password:?}");
        }
    }

    #[test]
    fn saslprep_normalises_the_password() {
        // U+00A0 (no-break space) maps to a plain space under SASLprep.
        let nbsp = ScramVerifier::from_password("a\u{00A0}b", &SALT, 1);
        assert_eq!(nbsp, ScramVerifier::from_password("a b", &SALT, 1));
    }

    #[test]
    fn md5_hash_matches_postgres_protocol() {
        assert_eq!(
            md5_hash("app", "secret"),
            postgres_protocol::password::md5(b"secret", "app")
        );
    }

    #[test]
    fn cleartext_password_verifies_against_every_secret_kind() {
        let secrets = [
            Secret::Plain("secret".into()),
            Secret::Md5(md5_hash("app", "secret")),
            Secret::Scram(ScramVerifier::from_password("secret", &SALT, 16)),
        ];
        for secret in secrets {
            assert_eq!(
                secret.verify_password("app", "secret"),
                Ok(()),
                "{secret:?}"
            );
            assert_eq!(
                secret.verify_password("app", "wrong"),
                Err(AuthError::InvalidPassword),
                "{secret:?}"
            );
        }
    }

    #[test]
    fn an_empty_stored_password_never_verifies() {
        let empty = Secret::Plain(String::new());
        assert!(matches!(
            empty.verify_password("app", ""),
            Err(AuthError::UnusableSecret(_))
        ));
        assert!(matches!(
            empty.scram_verifier(),
            Err(AuthError::UnusableSecret(_))
        ));
    }

    #[test]
    fn md5_secret_cannot_yield_a_scram_verifier() {
        let err = Secret::Md5(md5_hash("app", "x"))
            .scram_verifier()
            .unwrap_err();
        assert!(err.to_string().contains("md5"), "{err}");
    }

    #[test]
    fn plaintext_verifiers_get_fresh_salts() {
        let secret = Secret::Plain("secret".into());
        let a = secret.scram_verifier().unwrap();
        let b = secret.scram_verifier().unwrap();
        assert_ne!(a.salt(), b.salt());
        assert_eq!(a.iterations(), SCRAM_DEFAULT_ITERATIONS);
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let shown = format!("{:?}", Secret::Plain("hunter2".into()));
        assert!(!shown.contains("hunter2"), "{shown}");
        let verifier = ScramVerifier::from_password("x", &SALT, 1);
        let shown = format!("{:?}", Secret::Scram(verifier.clone()));
        assert!(!shown.contains(&STANDARD.encode(verifier.stored_key())));
    }
}
