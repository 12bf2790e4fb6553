//! Exchanges against the client in `postgres-protocol` (what
//! tokio-postgres speaks), plus hand-written malformed messages.

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::*;
use crate::auth::Secret;

/// Stored by PostgreSQL 15 for `CREATE ROLE app PASSWORD 'pencil'`.
const PG15_PENCIL: &str = "SCRAM-SHA-256$4096:P0JXnAVO/o8z7gsC5XaqUw==$\
    mGD9mfp5Nua/xWZstzC5djFY4zfRx9Hqg8UEkK1DiAk=:DwgSeTqQFx6PLPmSGMKreSm4k+qFwW/dvpMfZoQtIac=";
/// Stored by PostgreSQL 15 for `PASSWORD E'p\u00A0w\u00AD'`, which
/// SASLprep turns into "p w".
const PG15_SASLPREP: &str = "SCRAM-SHA-256$4096:LEHKLB85qeMOcWFy+WKvEA==$\
    7MCZ4ETPSue75SxBwuFcdZ07gwjTGaCica1jH+A+/xI=:sZs5boX5ncLw6wOtmKHy1gCsgxT3BfXTQQegOMgyGRM=";

fn verifier(secret: &str) -> ScramVerifier {
    Secret::parse(secret).scram_verifier().unwrap()
}

/// Runs a whole exchange; the error is the server's.
fn exchange(
    verifier: ScramVerifier,
    password: &str,
    binding: ChannelBinding,
) -> Result<(), AuthError> {
    let mut client = ScramSha256::new(password.as_bytes(), binding);
    let mut server = ScramServer::new_random(verifier);
    let server_first = server.client_first(SCRAM_SHA_256, client.message())?;
    client
        .update(&server_first)
        .expect("client accepts server-first");
    let server_final = server.client_final(client.message())?;
    client
        .finish(&server_final)
        .expect("client accepts the server's signature");
    Ok(())
}

/// Runs an exchange up to client-final, returning the server and the
/// client-final text for tampering.
fn until_final(password: &str) -> (ScramServer, String) {
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut server = ScramServer::new(verifier("secret"), "server-nonce".into());
    let server_first = server
        .client_first(SCRAM_SHA_256, client.message())
        .unwrap();
    client.update(&server_first).unwrap();
    let final_message = String::from_utf8(client.message().to_vec()).unwrap();
    (server, final_message)
}

fn assert_protocol_error(result: Result<Vec<u8>, AuthError>) {
    match result {
        Err(err @ AuthError::Protocol(_)) => assert_eq!(err.sqlstate(), "08P01"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn right_password_succeeds_with_a_plaintext_secret() {
    assert_eq!(
        exchange(verifier("secret"), "secret", ChannelBinding::unsupported()),
        Ok(())
    );
}

#[test]
fn right_password_succeeds_with_a_stored_verifier() {
    let stored = ScramVerifier::from_password("secret", b"saltsaltsaltsalt", 4096).to_string();
    assert_eq!(
        exchange(verifier(&stored), "secret", ChannelBinding::unsupported()),
        Ok(())
    );
}

#[test]
fn wrong_password_fails_as_invalid_password() {
    let stored = ScramVerifier::from_password("secret", b"saltsaltsaltsalt", 4096).to_string();
    for secret in ["secret", stored.as_str()] {
        let err = exchange(verifier(secret), "wrong", ChannelBinding::unsupported()).unwrap_err();
        assert_eq!(err, AuthError::InvalidPassword);
        assert_eq!(err.sqlstate(), "28P01");
    }
}

#[test]
fn verifier_made_by_postgresql_authenticates() {
    assert!(matches!(Secret::parse(PG15_PENCIL), Secret::Scram(_)));
    assert_eq!(
        exchange(
            verifier(PG15_PENCIL),
            "pencil",
            ChannelBinding::unsupported()
        ),
        Ok(())
    );
    assert_eq!(
        exchange(verifier(PG15_PENCIL), "pen", ChannelBinding::unsupported()),
        Err(AuthError::InvalidPassword)
    );
}

#[test]
fn from_password_reproduces_postgresql_verifiers() {
    for (stored, password) in [(PG15_PENCIL, "pencil"), (PG15_SASLPREP, "p\u{A0}w\u{AD}")] {
        let theirs: ScramVerifier = stored.parse().unwrap();
        let ours = ScramVerifier::from_password(password, theirs.salt(), theirs.iterations());
        assert_eq!(ours.to_string(), stored);
    }
}

#[test]
fn saslprep_equivalent_password_authenticates() {
    assert_eq!(
        exchange(
            verifier(PG15_SASLPREP),
            "p w",
            ChannelBinding::unsupported()
        ),
        Ok(())
    );
}

#[test]
fn client_that_supports_binding_but_is_not_offered_it_is_accepted() {
    // gs2 flag 'y', as libpq sends over TLS when the server lists no -PLUS.
    assert_eq!(
        exchange(verifier("secret"), "secret", ChannelBinding::unrequested()),
        Ok(())
    );
}

#[test]
fn client_that_requires_channel_binding_is_refused() {
    let mut server = ScramServer::new_random(verifier("secret"));
    assert_protocol_error(server.client_first(SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc"));
    let mut server = ScramServer::new_random(verifier("secret"));
    assert_protocol_error(server.client_first("SCRAM-SHA-256-PLUS", b"n,,n=,r=abc"));
}

#[test]
fn unknown_mechanism_is_a_protocol_error() {
    let mut server = ScramServer::new_random(verifier("secret"));
    assert_protocol_error(server.client_first("SCRAM-SHA-1", b"n,,n=,r=abc"));
}

#[test]
fn user_name_in_client_first_is_ignored() {
    let mut server = ScramServer::new(verifier("secret"), "srv".into());
    let first = server
        .client_first(SCRAM_SHA_256, b"n,,n=someone-else,r=cli")
        .unwrap();
    assert!(first.starts_with(b"r=clisrv,s="), "{first:?}");
}

#[test]
fn server_first_carries_salt_and_iterations() {
    let stored = ScramVerifier::from_password("secret", b"0123456789abcdef", 1234);
    let mut server = ScramServer::new(stored, "srv".into());
    let first = server.client_first(SCRAM_SHA_256, b"n,,n=,r=cli").unwrap();
    assert_eq!(first, b"r=clisrv,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=1234");
}

#[test]
fn malformed_client_first_messages_are_protocol_errors() {
    for message in [
        &b""[..],
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,r=abc",
        b"n,,n=,r=",
        b"n,,n=,r=a b",
        b"n,,n=,x",
        b"n,,n=,r=abc,1=bad",
        b"n,,n=,r=\xff",
        b"n",
    ] {
        let mut server = ScramServer::new_random(verifier("secret"));
        assert_protocol_error(server.client_first(SCRAM_SHA_256, message));
    }
}

#[test]
fn extensions_after_the_nonce_are_ignored() {
    let mut server = ScramServer::new(verifier("secret"), "srv".into());
    let first = server
        .client_first(SCRAM_SHA_256, b"n,,n=,r=cli,x=1")
        .unwrap();
    assert!(first.starts_with(b"r=clisrv,"));
}

#[test]
fn tampered_nonce_is_a_protocol_error() {
    let (mut server, message) = until_final("secret");
    let tampered = message.replacen("server-nonce", "server-nonsense", 1);
    assert_protocol_error(server.client_final(tampered.as_bytes()));
}

#[test]
fn channel_binding_attribute_must_repeat_the_gs2_header() {
    // The client said 'n' in client-first; "eSws" is base64 of "y,,".
    let (mut server, message) = until_final("secret");
    let tampered = message.replacen("c=biws", "c=eSws", 1);
    assert_ne!(tampered, message);
    assert_protocol_error(server.client_final(tampered.as_bytes()));
}

#[test]
fn malformed_client_final_messages_are_protocol_errors() {
    let (_, good) = until_final("secret");
    let (without_proof, proof) = good.rsplit_once(",p=").unwrap();
    let cases = [
        String::new(),
        "c=biws".to_owned(),
        without_proof.to_owned(),
        format!("{without_proof},p=not-base64!"),
        format!("{without_proof},p=AAAA"),
        format!("{without_proof},p={proof},x=trailing"),
        format!("{without_proof},p={proof},p={proof}"),
        format!("r=x,{without_proof},p={proof}"),
        format!("c=%%%,r=x,p={proof}"),
    ];
    for message in cases {
        let (mut server, _) = until_final("secret");
        assert_protocol_error(server.client_final(message.as_bytes()));
    }
}

#[test]
fn messages_out_of_order_are_protocol_errors() {
    let mut server = ScramServer::new_random(verifier("secret"));
    assert_protocol_error(server.client_final(b"c=biws,r=x,p=AAAA"));

    let (mut server, message) = until_final("secret");
    assert_protocol_error(server.client_first(SCRAM_SHA_256, b"n,,n=,r=cli"));
    // A failed step ends the exchange: no second try at the proof.
    assert_protocol_error(server.client_final(message.as_bytes()));
}

#[test]
fn finished_exchange_accepts_nothing_more() {
    let (mut server, message) = until_final("secret");
    server.client_final(message.as_bytes()).unwrap();
    assert_protocol_error(server.client_final(message.as_bytes()));
}

#[test]
fn mock_exchange_runs_to_the_end_and_fails() {
    let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
    let mut server = ScramServer::mock("ghost", b"server lifetime key");
    let server_first = server
        .client_first(SCRAM_SHA_256, client.message())
        .unwrap();
    client.update(&server_first).unwrap();
    assert_eq!(
        server.client_final(client.message()),
        Err(AuthError::InvalidPassword)
    );
}

#[test]
fn mock_salt_is_stable_per_user() {
    let salt_of = |user: &str| {
        let mut server = ScramServer::mock(user, b"key");
        let first = server.client_first(SCRAM_SHA_256, b"n,,n=,r=c").unwrap();
        String::from_utf8(first)
            .unwrap()
            .split(',')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(salt_of("ghost"), salt_of("ghost"));
    assert_ne!(salt_of("ghost"), salt_of("phantom"));
}

#[test]
fn generated_nonces_are_32_printable_characters() {
    let nonce = generate_nonce(&mut rand::rng());
    assert_eq!(nonce.len(), 32);
    assert!(nonce.bytes().all(is_printable));
    assert_ne!(nonce, generate_nonce(&mut rand::rng()));
}

/// An exchange over a TLS channel whose `tls-server-end-point` value is
/// `server_cb`; the client binds to `client_cb` with SCRAM-SHA-256-PLUS.
fn plus_exchange(server_cb: &[u8], client_cb: &[u8]) -> Result<(), AuthError> {
    let mut client = ScramSha256::new(
        b"secret",
        ChannelBinding::tls_server_end_point(client_cb.to_vec()),
    );
    let mut server =
        ScramServer::new_random(verifier("secret")).with_channel_binding(server_cb.to_vec());
    assert_eq!(server.mechanisms(), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
    let server_first = server.client_first(SCRAM_SHA_256_PLUS, client.message())?;
    client.update(&server_first).unwrap();
    let server_final = server.client_final(client.message())?;
    client.finish(&server_final).unwrap();
    Ok(())
}

#[test]
fn channel_binding_to_the_same_certificate_succeeds() {
    assert_eq!(
        plus_exchange(b"certificate hash", b"certificate hash"),
        Ok(())
    );
}

#[test]
fn channel_binding_to_another_certificate_fails() {
    // A machine in the middle presents its own certificate: the hashes differ.
    assert_protocol_error(
        plus_exchange(b"certificate hash", b"someone else's").map(|()| Vec::new()),
    );
}

#[test]
fn a_client_that_could_bind_but_did_not_while_offered_is_refused() {
    // 'y' while the server offers -PLUS: a downgrade in transit.
    let client = ScramSha256::new(b"secret", ChannelBinding::unrequested());
    let mut server =
        ScramServer::new_random(verifier("secret")).with_channel_binding(b"h".to_vec());
    assert_protocol_error(server.client_first(SCRAM_SHA_256, client.message()));
    // Plain SCRAM without binding support ('n') is still fine over TLS.
    let mut client = ScramSha256::new(b"secret", ChannelBinding::unsupported());
    let mut server =
        ScramServer::new_random(verifier("secret")).with_channel_binding(b"h".to_vec());
    let first = server
        .client_first(SCRAM_SHA_256, client.message())
        .unwrap();
    client.update(&first).unwrap();
    assert!(server.client_final(client.message()).is_ok());
}
