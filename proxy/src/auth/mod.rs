//! Client authentication, as pure functions and state machines: no
//! sockets here, the `server` module drives the messages.
//!
//! The flow for one client, after its startup message:
//!
//! 1. [`Hba::lookup`] picks the method for (user, database, peer address,
//!    TLS). `None` means refuse. [`effective_method`] then adjusts it to the
//!    user's [`Secret`] as PostgreSQL does (an `md5` rule runs SCRAM for a
//!    SCRAM verifier).
//! 2. By method, the server sends:
//!    - `scram-sha-256`: AuthenticationSASL listing [`SCRAM_SHA_256`]. The
//!      client's SASLInitialResponse goes to [`ScramServer::client_first`],
//!      whose answer goes back in AuthenticationSASLContinue; its
//!      SASLResponse goes to [`ScramServer::client_final`], whose answer goes
//!      back in AuthenticationSASLFinal.
//!    - `md5`: AuthenticationMD5Password with a fresh [`md5_salt`]; the
//!      client's PasswordMessage goes to [`verify_md5_response`].
//!    - `password`: AuthenticationCleartextPassword; the PasswordMessage
//!      goes to [`Secret::verify_password`].
//!    - `trust`: nothing; `reject`: refuse.
//! 3. `Ok` means AuthenticationOk. An [`AuthError`] carries the SQLSTATE
//!    and the client-facing message for the ErrorResponse.
//!
//! An unknown user should still get the full exchange and a plain password
//! failure ([`ScramServer::mock`]), so that clients cannot probe for names.

mod certmap;
mod error;
mod hba;
mod md5;
mod scram;
mod secret;
pub mod throttle;

pub use self::md5::{md5_challenge_response, md5_salt, verify_md5_response};
pub use certmap::CertMap;
pub use error::{AuthError, SQLSTATE_INVALID_PASSWORD, SQLSTATE_PROTOCOL_VIOLATION};
pub use hba::{
    AddressMatch, ClientCert, ConnType, Hba, HbaIssue, HbaRule, HbaRuleConfig, Matcher, Method,
    Name, OneOrMany, effective_method,
};
pub use scram::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramServer, generate_nonce};
pub use secret::{
    SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN, ScramVerifier, Secret, VerifierParseError,
    md5_hash,
};
