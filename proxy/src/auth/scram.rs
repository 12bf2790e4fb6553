//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL
//! speaks it.
//!
//! ```text
//! server: AuthenticationSASL ["SCRAM-SHA-256"]
//! client: SASLInitialResponse  mechanism, client-first  -> client_first()
//! server: AuthenticationSASLContinue  server-first       <-
//! client: SASLResponse  client-final                     -> client_final()
//! server: AuthenticationSASLFinal  server-final ("v=…")  <-  then AuthenticationOk
//! ```
//!
//! Like PostgreSQL, the user name inside client-first is ignored: the user
//! is the one named in the startup message. Over TLS the exchange also
//! offers SCRAM-SHA-256-PLUS with channel binding `tls-server-end-point`
//! (RFC 5929: the hash of the certificate tidepool presented), so a client
//! that binds proves it talks to the endpoint holding that certificate, not
//! to a machine in the middle. A client that says it supports binding (`y`)
//! while the server offered it is refused, as PostgreSQL does: that means a
//! downgrade was attempted. Without TLS only SCRAM-SHA-256 is offered, and a
//! client that insists on binding (`p`) is refused.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::AuthError;
use super::secret::{ScramVerifier, hmac_sha256};

/// The mechanism name, as listed in AuthenticationSASL.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The mechanism with channel binding, offered over TLS.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The one channel-binding type PostgreSQL defines.
const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// Random bytes in a server nonce; base64 makes them 32 printable
/// characters.
const NONCE_BYTES: usize = 24;

/// A fresh server nonce: 24 random bytes, base64.
pub fn generate_nonce<R: CryptoRng + ?Sized>(rng: &mut R) -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    rng.fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

/// One SCRAM exchange with one client. Feed it the client's two messages
/// in order; `client_final` returning `Ok` means the client is in.
#[derive(Debug)]
pub struct ScramServer {
    verifier: ScramVerifier,
    server_nonce: String,
    /// Set for a stand-in exchange that must fail however it goes.
    doomed: bool,
    /// `tls-server-end-point` data when the connection is TLS: then
    /// SCRAM-SHA-256-PLUS is offered.
    channel_binding: Option<Vec<u8>>,
    state: State,
}

#[derive(Debug)]
enum State {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// What the client-final `c=` attribute must carry, decoded: the
        /// gs2 header (`n,,`, `y,,` or `p=tls-server-end-point,,`) and,
        /// with binding, the channel-binding data after it.
        expected_binding: Vec<u8>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Finished,
}

impl ScramServer {
    /// Starts an exchange against `verifier` (a stored one, or
    /// [`Secret::scram_verifier`](super::Secret::scram_verifier) for a
    /// plaintext password). `server_nonce` must be unpredictable and made
    /// of printable ASCII other than `,`; [`generate_nonce`] makes one.
    pub fn new(verifier: ScramVerifier, server_nonce: String) -> Self {
        debug_assert!(
            !server_nonce.is_empty() && server_nonce.bytes().all(is_printable),
            "a SCRAM nonce is printable ASCII without ','"
        );
        ScramServer {
            verifier,
            server_nonce,
            doomed: false,
            channel_binding: None,
            state: State::AwaitingClientFirst,
        }
    }

    /// Offers SCRAM-SHA-256-PLUS bound to `data`, the connection's
    /// `tls-server-end-point` value.
    pub fn with_channel_binding(mut self, data: Vec<u8>) -> Self {
        self.channel_binding = Some(data);
        self
    }

    /// The mechanisms to list in AuthenticationSASL, preferred first.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel_binding.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// Starts an exchange with a nonce drawn from `rng`.
    pub fn with_rng<R: CryptoRng + ?Sized>(verifier: ScramVerifier, rng: &mut R) -> Self {
        Self::new(verifier, generate_nonce(rng))
    }

    /// Starts an exchange with a nonce from the thread's CSPRNG.
    pub fn new_random(verifier: ScramVerifier) -> Self {
        Self::with_rng(verifier, &mut rand::rng())
    }

    /// A stand-in exchange for a user who does not exist or cannot log in
    /// with SCRAM: it runs to the end and then fails as a wrong password
    /// would, so a client cannot probe which users exist. As in PostgreSQL,
    /// the salt is derived from the user name and a key the server keeps
    /// for its lifetime (`mock_key`), so repeated probes see a stable salt
    /// just as they would for a real stored verifier.
    pub fn mock(user: &str, mock_key: &[u8]) -> Self {
        let salt = hmac_sha256(mock_key, user.as_bytes());
        let stored = hmac_sha256(mock_key, b"stored");
        let server = hmac_sha256(mock_key, b"server");
        let text = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            super::secret::SCRAM_DEFAULT_ITERATIONS,
            STANDARD.encode(&salt[..super::secret::SCRAM_DEFAULT_SALT_LEN]),
            STANDARD.encode(stored),
            STANDARD.encode(server),
        );
        let verifier = text.parse().expect("a well-formed verifier");
        ScramServer {
            doomed: true,
            ..Self::new_random(verifier)
        }
    }

    /// Handles SASLInitialResponse: checks the mechanism and client-first
    /// message, and returns server-first for AuthenticationSASLContinue.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        // Any failure below ends the exchange: a client gets one try.
        let state = std::mem::replace(&mut self.state, State::Finished);
        if !matches!(state, State::AwaitingClientFirst) {
            return Err(AuthError::protocol("unexpected SASL initial response"));
        }
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.channel_binding.is_some() => true,
            SCRAM_SHA_256_PLUS => {
                return Err(AuthError::protocol(
                    "SCRAM-SHA-256-PLUS (channel binding) is offered over TLS only; use SCRAM-SHA-256",
                ));
            }
            _ => {
                return Err(AuthError::protocol(format!(
                    "client selected an invalid SASL authentication mechanism \"{mechanism}\""
                )));
            }
        };
        let message = utf8(data)?;
        let (gs2_header, bare) = split_gs2_header(message)?;
        let expected_binding = match (plus, gs2_header.as_bytes()[0]) {
            (true, b'p') => {
                let cb_type = gs2_header[2..].trim_end_matches(',');
                if cb_type != TLS_SERVER_END_POINT {
                    return Err(AuthError::protocol(format!(
                        "unsupported SCRAM channel-binding type \"{cb_type}\"; use {TLS_SERVER_END_POINT}"
                    )));
                }
                let mut expected = gs2_header.as_bytes().to_vec();
                expected.extend_from_slice(self.channel_binding.as_deref().unwrap_or_default());
                expected
            }
            (true, _) => {
                return Err(AuthError::protocol(
                    "SCRAM-SHA-256-PLUS was selected, but the client-first message does not bind a channel",
                ));
            }
            (false, b'p') => {
                return Err(AuthError::protocol(
                    "the client requires channel binding but selected SCRAM-SHA-256; select SCRAM-SHA-256-PLUS",
                ));
            }
            (false, b'y') if self.channel_binding.is_some() => {
                return Err(AuthError::protocol(
                    "SCRAM channel binding negotiation error: the client supports binding and the server offered it, yet the client did not use it",
                ));
            }
            (false, _) => gs2_header.as_bytes().to_vec(),
        };
        let client_nonce = parse_client_first_bare(bare)?;

        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(self.verifier.salt()),
            self.verifier.iterations()
        );
        self.state = State::AwaitingClientFinal {
            expected_binding,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first.into_bytes())
    }

    /// Handles SASLResponse: checks client-final and the client's proof,
    /// and returns server-final (`v=…`) for AuthenticationSASLFinal.
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::AwaitingClientFinal {
            expected_binding,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Finished)
        else {
            return Err(AuthError::protocol("unexpected SASL response"));
        };
        let message = utf8(data)?;
        let final_message = parse_client_final(message)?;

        let binding = STANDARD
            .decode(final_message.channel_binding)
            .map_err(|_| {
                AuthError::protocol("the channel-binding attribute in client-final is not base64")
            })?;
        if !bool::from(binding.ct_eq(&expected_binding)) {
            return Err(AuthError::protocol(
                "SCRAM channel binding check failed: the client is bound to another channel",
            ));
        }
        if final_message.nonce != nonce {
            return Err(AuthError::protocol(
                "the nonce in client-final does not match the exchange",
            ));
        }
        let proof: [u8; 32] = STANDARD
            .decode(final_message.proof)
            .ok()
            .and_then(|proof| proof.try_into().ok())
            .ok_or_else(|| AuthError::protocol("the client proof is not 32 bytes of base64"))?;

        let auth_message = format!(
            "{client_first_bare},{server_first},{}",
            final_message.without_proof
        );
        let client_signature = hmac_sha256(self.verifier.stored_key(), auth_message.as_bytes());
        let mut client_key = proof;
        for (key, signature) in client_key.iter_mut().zip(client_signature) {
            *key ^= signature;
        }
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let proof_ok: bool = stored_key.ct_eq(self.verifier.stored_key()).into();
        if !proof_ok || self.doomed {
            return Err(AuthError::InvalidPassword);
        }
        let server_signature = hmac_sha256(self.verifier.server_key(), auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

fn utf8(data: &[u8]) -> Result<&str, AuthError> {
    std::str::from_utf8(data).map_err(|_| AuthError::protocol("SCRAM message is not UTF-8"))
}

/// A SCRAM `printable`: any visible ASCII character but `,`.
fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

/// Splits client-first into its gs2 header (`n,,`, `y,,` or
/// `p=<type>,,`) and the bare message that the proof signs.
fn split_gs2_header(message: &str) -> Result<(&str, &str), AuthError> {
    let flag_end = match message.as_bytes() {
        [b'n' | b'y', b',', ..] => 2,
        [b'p', b'=', ..] => match message.find(',') {
            Some(comma) => comma + 1,
            None => return Err(AuthError::protocol("malformed gs2 header in client-first")),
        },
        _ => {
            return Err(AuthError::protocol(
                "unexpected channel-binding flag in client-first",
            ));
        }
    };
    let rest = &message[flag_end..];
    if rest.starts_with("a=") {
        return Err(AuthError::protocol(
            "client uses an authorization identity, which is not supported",
        ));
    }
    let Some(bare) = rest.strip_prefix(',') else {
        return Err(AuthError::protocol("malformed gs2 header in client-first"));
    };
    Ok(message.split_at(message.len() - bare.len()))
}

/// Checks `n=<user>,r=<nonce>[,ext…]` and returns the client nonce. The
/// user name is not used (the startup message's user counts).
fn parse_client_first_bare(bare: &str) -> Result<&str, AuthError> {
    let mut attrs = bare.split(',');
    let user = attrs.next().unwrap_or_default();
    if user.starts_with("m=") {
        return Err(AuthError::protocol(
            "client requires an unsupported SCRAM extension",
        ));
    }
    attribute(user, 'n')?;
    let nonce = attribute(attrs.next().unwrap_or_default(), 'r')?;
    if nonce.is_empty() || !nonce.bytes().all(is_printable) {
        return Err(AuthError::protocol(
            "the client nonce is empty or not printable",
        ));
    }
    for extension in attrs {
        any_attribute(extension)?;
    }
    Ok(nonce)
}

struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    proof: &'a str,
    /// Everything before `,p=`: the part the proof signs.
    without_proof: &'a str,
}

/// Parses `c=<binding>,r=<nonce>[,ext…],p=<proof>`.
fn parse_client_final(message: &str) -> Result<ClientFinal<'_>, AuthError> {
    let (without_proof, proof) = message
        .rsplit_once(',')
        .ok_or_else(|| AuthError::protocol("client-final is missing attributes"))?;
    let proof = attribute(proof, 'p')?;
    let mut attrs = without_proof.split(',');
    let channel_binding = attribute(attrs.next().unwrap_or_default(), 'c')?;
    let nonce = attribute(attrs.next().unwrap_or_default(), 'r')?;
    for extension in attrs {
        if any_attribute(extension)? == 'p' {
            return Err(AuthError::protocol("garbage at end of client-final"));
        }
    }
    Ok(ClientFinal {
        channel_binding,
        nonce,
        proof,
        without_proof,
    })
}

/// The value of `<name>=<value>`, or a protocol error naming what was
/// expected.
fn attribute(attr: &str, name: char) -> Result<&str, AuthError> {
    attr.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('='))
        .ok_or_else(|| {
            AuthError::protocol(format!("expected attribute \"{name}\" in SCRAM message"))
        })
}

/// Checks an attribute of any name (`<letter>=…`) and returns its name.
fn any_attribute(attr: &str) -> Result<char, AuthError> {
    match attr.as_bytes() {
        [name, b'=', ..] if name.is_ascii_alphabetic() => Ok(char::from(*name)),
        _ => Err(AuthError::protocol("malformed SCRAM attribute")),
    }
}

#[cfg(test)]
#[path = "scram_tests.rs"]
mod tests;
