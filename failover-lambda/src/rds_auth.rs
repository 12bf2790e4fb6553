//! RDS IAM database authentication tokens.
//!
//! With IAM authentication an RDS or Aurora PostgreSQL server takes, as
//! the password, a short-lived token: a SigV4 presigned
//! `GET https://{host}:{port}/?Action=connect&DBUser={user}` for the
//! service `rds-db`, without its `https://`. It is valid for 15 minutes
//! and proves the caller holds credentials allowed `rds-db:connect` on
//! that user — so tidepool logs in to its backends with the node's IAM
//! role and keeps no database password at all.
//!
//! [`auth_token`] is a pure function of its inputs and the time, and its
//! output is byte for byte what botocore's `generate_db_auth_token` makes
//! (the reference every AWS SDK agrees with; `tests/rds_auth_botocore.rs`
//! compares the two). [`TokenSource`] takes credentials from a provider
//! (the SDK's default chain) and reuses a token per server and user for
//! ten minutes, so a burst of new backend connections signs once, while
//! every token handed out still has five minutes left to log in with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningParams, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::error::display::DisplayErrorContext;

/// How long RDS accepts a token after it was signed (`X-Amz-Expires`).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// How long [`TokenSource`] hands out the same token: well inside
/// [`TOKEN_LIFETIME`], so a token is never given out in its last minutes.
pub const REUSE_FOR: Duration = Duration::from_secs(600);

/// A token signed with temporary credentials stops working when they
/// expire; it is reused only until this long before that.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(60);

/// The SigV4 service name RDS IAM authentication signs for.
const SIGNING_NAME: &str = "rds-db";

/// The signing parameters in the order botocore writes them; the
/// signature itself covers them sorted, so only the text depends on it.
const PARAM_ORDER: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Security-Token",
    "X-Amz-Signature",
];

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
pub enum RdsAuthError {
    /// The SDK configuration carries no credentials provider.
    #[error(
        "no AWS credentials provider is configured for RDS IAM authentication; \
         give the node an instance role, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    )]
    NoCredentialsProvider,

    /// Neither the call nor the SDK configuration names a region.
    #[error("no AWS region to sign RDS IAM tokens for; set AWS_REGION or the backend's `region`")]
    NoRegion,

    /// The credentials provider failed.
    #[error(
        "AWS credentials for RDS IAM authentication could not be loaded: {detail}; \
         check the instance role or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )]
    Credentials { detail: String },

    /// The inputs cannot form a request to sign (e.g. a host that is not a
    /// valid URI authority).
    #[error("cannot sign an RDS IAM token for {endpoint}: {detail}")]
    Signing { endpoint: String, detail: String },
}

/// The token RDS expects as the password of `user` on `host:port`, signed
/// at `now` for `region` with `creds` (their session token, if any, goes
/// into the token as `X-Amz-Security-Token`).
///
/// `host` is the DNS name (or IPv4 address) the client connects to, as
/// given: it appears unchanged in the token and lower-cased in the signed
/// `host` header, which omits the port when it is 443, as botocore does.
pub fn auth_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    creds: &Credentials,
    now: SystemTime,
) -> Result<String, RdsAuthError> {
    let endpoint = format!("{host}:{port}");
    let host_header = if port == 443 {
        host.to_ascii_lowercase()
    } else {
        format!("{}:{port}", host.to_ascii_lowercase())
    };
    let operation = format!("Action=connect&DBUser={}", encode(user));

    let identity: Identity = creds.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let params: SigningParams<'_> = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| signing_error(&endpoint, e))?
        .into();
    let request = SignableRequest::new(
        "GET",
        format!("https://{endpoint}/?{operation}"),
        std::iter::once(("host", host_header.as_str())),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| signing_error(&endpoint, DisplayErrorContext(e)))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| signing_error(&endpoint, DisplayErrorContext(e)))?
        .into_parts();

    let signed = instructions.params();
    let mut token = format!("{endpoint}/?{operation}");
    let mut written = 0;
    for name in PARAM_ORDER {
        if let Some((_, value)) = signed.iter().find(|(k, _)| *k == name) {
            token.push('&');
            token.push_str(name);
            token.push('=');
            token.push_str(&encode(value));
            written += 1;
        }
    }
    // A parameter this code does not place would be silently dropped and
    // the token rejected at login; refuse it here instead.
    if written != signed.len() || !token.contains("&X-Amz-Signature=") {
        let names: Vec<&str> = signed.iter().map(|(k, _)| *k).collect();
        return Err(signing_error(
            &endpoint,
            format!("the signer returned unexpected parameters {names:?}"),
        ));
    }
    Ok(token)
}

fn signing_error(endpoint: &str, detail: impl std::fmt::Display) -> RdsAuthError {
    RdsAuthError::Signing {
        endpoint: endpoint.to_owned(),
        detail: detail.to_string(),
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters, with upper-case
/// hex: botocore's `percent_encode` and SigV4's canonical form alike.
fn encode(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Where a [`TokenSource`] reads the time; replaced in tests.
type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host: String,
    port: u16,
    user: String,
    region: String,
}

#[derive(Clone)]
struct Cached {
    token: String,
    signed_at: SystemTime,
    reuse_until: SystemTime,
}

impl Cached {
    /// A clock that went backwards makes the entry stale too: its token
    /// may have been signed in what is now the future.
    fn is_fresh(&self, now: SystemTime) -> bool {
        self.signed_at <= now && now < self.reuse_until
    }
}

/// Hands out RDS IAM tokens, signing a new one per (host, port, user,
/// region) at most every [`REUSE_FOR`].
///
/// Credentials are asked of the provider only when a token is signed. The
/// provider in an [`SdkConfig`] is the SDK's chain as is (the SDK's
/// identity cache sits in its clients, not in the provider), so with an
/// instance role that is one metadata read per new token.
pub struct TokenSource {
    credentials: SharedCredentialsProvider,
    region: Option<String>,
    clock: Clock,
    cache: Mutex<HashMap<Key, Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("credentials", &self.credentials)
            .field("region", &self.region)
            .field("cached", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Signs with `credentials`; `region` is the default for calls that
    /// name none.
    pub fn new(credentials: SharedCredentialsProvider, region: Option<String>) -> TokenSource {
        TokenSource {
            credentials,
            region,
            clock: Arc::new(SystemTime::now),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Uses the credentials provider and region of a loaded SDK
    /// configuration (`aws_config::load_defaults`, or the one the proxy
    /// builds its clients from).
    pub fn from_sdk_config(config: &SdkConfig) -> Result<TokenSource, RdsAuthError> {
        let credentials = config
            .credentials_provider()
            .ok_or(RdsAuthError::NoCredentialsProvider)?;
        let region = config.region().map(|r| r.as_ref().to_owned());
        Ok(TokenSource::new(credentials, region))
    }

    /// Reads the time from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// A token to log in as `user` on `host:port`, signed for `region` or,
    /// when that is `None`, for the source's region.
    pub async fn token(
        &self,
        host: &str,
        port: u16,
        user: &str,
        region: Option<&str>,
    ) -> Result<String, RdsAuthError> {
        let region = region
            .or(self.region.as_deref())
            .ok_or(RdsAuthError::NoRegion)?;
        let key = Key {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            region: region.to_owned(),
        };
        let now = (self.clock)();
        let hit = self
            .lock()
            .get(&key)
            .filter(|c| c.is_fresh(now))
            .map(|c| c.token.clone());
        if let Some(token) = hit {
            return Ok(token);
        }

        let creds = self.credentials.provide_credentials().await.map_err(|e| {
            RdsAuthError::Credentials {
                detail: DisplayErrorContext(e).to_string(),
            }
        })?;
        let signed_at = (self.clock)();
        let token = auth_token(host, port, user, region, &creds, signed_at)?;
        let entry = Cached {
            token: token.clone(),
            signed_at,
            reuse_until: reuse_until(signed_at, creds.expiry()),
        };
        let mut cache = self.lock();
        cache.retain(|_, c| c.is_fresh(signed_at));
        cache.insert(key, entry);
        Ok(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Until when a token signed at `signed_at` is handed out again: for
/// [`REUSE_FOR`], and not past shortly before the credentials expire.
fn reuse_until(signed_at: SystemTime, expiry: Option<SystemTime>) -> SystemTime {
    let by_age = signed_at + REUSE_FOR;
    match expiry.and_then(|e| e.checked_sub(CREDENTIALS_MARGIN)) {
        Some(limit) => by_age.min(limit),
        None => by_age,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::UNIX_EPOCH;

    use aws_credential_types::provider::future;

    use super::*;

    /// 2024-03-05T07:08:09Z.
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_709_622_489)
    }

    fn long_term() -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        )
    }

    // Expected values printed by botocore 1.35.99's generate_db_auth_token
    // (tests/botocore_auth_token.py) for the same inputs.
    #[test]
    fn token_with_long_term_keys_is_what_botocore_makes() {
        let token = auth_token(
            "tidepool-db.c9akciq32.us-east-1.rds.amazonaws.com",
            5432,
            "app_user",
            "us-east-1",
            &long_term(),
            t0(),
        )
        .unwrap();
        assert_eq!(
            token,
            "tidepool-db.c9akciq32.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_user\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20240305%2Fus-east-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20240305T070809Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=81d51b7e0ace79c76ac101ab46e9cb064c1eb57fa58ab70f9ad32191def43665"
        );
    }

    #[test]
    fn token_with_a_session_token_odd_user_and_port_443_is_what_botocore_makes() {
        let creds = Credentials::new(
            "ASIAEXAMPLETEMPKEY",
            "temp/secret+key=",
            Some("IQoJb3JpZ2luX2VjE/+token==".to_owned()),
            None,
            "test",
        );
        let token = auth_token(
            "Orders.Cluster-XYZ.eu-west-1.rds.amazonaws.com",
            443,
            "iam user+ops/é@x",
            "eu-west-1",
            &creds,
            t0(),
        )
        .unwrap();
        assert_eq!(
            token,
            "Orders.Cluster-XYZ.eu-west-1.rds.amazonaws.com:443/?Action=connect\
             &DBUser=iam%20user%2Bops%2F%C3%A9%40x&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=ASIAEXAMPLETEMPKEY%2F20240305%2Feu-west-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20240305T070809Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Security-Token=IQoJb3JpZ2luX2VjE%2F%2Btoken%3D%3D\
             &X-Amz-Signature=99a5023e43a45571196c68d6bd71c315158d04bf97ad9770dcbdfb8c3008f5ef"
        );
    }

    #[test]
    fn a_host_that_is_not_an_authority_is_an_error_not_a_panic() {
        let err = auth_token("bad host", 5432, "u", "us-east-1", &long_term(), t0()).unwrap_err();
        assert!(matches!(err, RdsAuthError::Signing { .. }), "{err:?}");
        assert!(err.to_string().contains("bad host:5432"), "{err}");
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(encode(" +/=&%é"), "%20%2B%2F%3D%26%25%C3%A9");
    }

    /// A provider that counts how often it is asked.
    #[derive(Debug)]
    struct Counting {
        creds: Credentials,
        calls: Arc<AtomicUsize>,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.calls.fetch_add(1, Ordering::SeqCst);
            future::ProvideCredentials::ready(Ok(self.creds.clone()))
        }
    }

    struct Fixture {
        source: TokenSource,
        calls: Arc<AtomicUsize>,
        now: Arc<Mutex<SystemTime>>,
    }

    impl Fixture {
        fn new(creds: Credentials) -> Fixture {
            let calls = Arc::new(AtomicUsize::new(0));
            let now = Arc::new(Mutex::new(t0()));
            let provider = Counting {
                creds,
                calls: calls.clone(),
            };
            let clock = now.clone();
            let source = TokenSource::new(
                SharedCredentialsProvider::new(provider),
                Some("us-east-1".to_owned()),
            )
            .with_clock(move || *clock.lock().unwrap());
            Fixture { source, calls, now }
        }

        fn at(&self, after: Duration) {
            *self.now.lock().unwrap() = t0() + after;
        }

        async fn token(&self, user: &str) -> String {
            self.source
                .token("db.example.internal", 5432, user, None)
                .await
                .unwrap()
        }

        fn signings(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_token_is_reused_for_ten_minutes_then_signed_again() {
        let f = Fixture::new(long_term());
        let first = f.token("app").await;
        assert!(first.contains("X-Amz-Date=20240305T070809Z"), "{first}");
        f.at(10 * MINUTE - Duration::from_secs(1));
        assert_eq!(f.token("app").await, first);
        assert_eq!(f.signings(), 1);

        f.at(10 * MINUTE);
        let second = f.token("app").await;
        assert_ne!(second, first);
        assert!(second.contains("X-Amz-Date=20240305T071809Z"), "{second}");
        assert_eq!(f.signings(), 2);
    }

    #[tokio::test]
    async fn each_user_server_and_region_has_its_own_token() {
        let f = Fixture::new(long_term());
        let app = f.token("app").await;
        let report = f.token("report").await;
        assert_ne!(app, report);
        assert!(report.contains("DBUser=report&"), "{report}");
        let other_port = f
            .source
            .token("db.example.internal", 5433, "app", None)
            .await
            .unwrap();
        let other_region = f
            .source
            .token("db.example.internal", 5432, "app", Some("eu-west-1"))
            .await
            .unwrap();
        assert!(other_port.starts_with("db.example.internal:5433/"));
        assert!(other_region.contains("%2Feu-west-1%2Frds-db%2F"));
        assert_eq!(f.signings(), 4);
        assert_eq!(f.token("app").await, app);
        assert_eq!(f.signings(), 4);
    }

    #[tokio::test]
    async fn credentials_near_expiry_shorten_the_reuse() {
        let mut creds = long_term();
        *creds.expiry_mut() = Some(t0() + 5 * MINUTE);
        let f = Fixture::new(creds);
        let first = f.token("app").await;
        f.at(4 * MINUTE - Duration::from_secs(1));
        assert_eq!(f.token("app").await, first);
        f.at(4 * MINUTE);
        assert_ne!(f.token("app").await, first);
        assert_eq!(f.signings(), 2);
    }

    #[tokio::test]
    async fn a_clock_that_went_back_gets_a_new_token() {
        let f = Fixture::new(long_term());
        f.at(5 * MINUTE);
        let first = f.token("app").await;
        f.at(MINUTE);
        assert_ne!(f.token("app").await, first);
        assert_eq!(f.signings(), 2);
    }

    #[tokio::test]
    async fn without_any_region_the_error_says_where_to_set_one() {
        let source = TokenSource::new(SharedCredentialsProvider::new(long_term()), None);
        let err = source
            .token("db.example.internal", 5432, "app", None)
            .await
            .unwrap_err();
        assert!(matches!(err, RdsAuthError::NoRegion), "{err:?}");
        assert!(err.to_string().contains("AWS_REGION"), "{err}");
    }
}
