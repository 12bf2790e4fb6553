//! Backend passwords that do not sit in the configuration: a Secrets
//! Manager secret (moto), read at the first login and read again when a
//! backend refuses it after a rotation; and RDS IAM tokens, which tidepool
//! signs per connection with the SDK's credentials and sends as the
//! password (checked here on the wire by a server that records it; the
//! token itself equals botocore's, see failover-lambda's tests).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use tidepool_tests::{
    PgCluster, PgClusterOpts, Tidepool, TidepoolOpts, free_port, moto::Moto, wait_until,
};

fn start_moto() -> Moto {
    Moto::start(Ipv4Addr::LOCALHOST).expect("moto_server starts")
}

/// Runs `body` with `sm`, a boto3 Secrets Manager client on moto.
fn sm(moto: &Moto, body: &str) -> Result<String> {
    moto.python(&format!(
        "sm = boto3.client('secretsmanager', **kw)\n{body}"
    ))
}

/// The environment that points tidepool's AWS SDK at moto.
fn moto_env(moto: &Moto) -> Vec<(String, String)> {
    let mut env = TidepoolOpts::default().env;
    for (k, v) in [
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        env.push((k.into(), v.into()));
    }
    env
}

async fn login(tp: &Tidepool, user: &str, password: &str, db: &str) -> Result<String> {
    let (c, conn) =
        tokio_postgres::connect(&tp.conn_string(user, password, db), tokio_postgres::NoTls)
            .await
            .map_err(|e| anyhow::anyhow!("{e}: {:?}", e.as_db_error()))?;
    tokio::spawn(conn);
    let row = c
        .query_one("select current_user::text", &[])
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {:?}", e.as_db_error()))?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_secret_is_read_at_login_and_again_after_rotation() {
    let cluster =
        tokio::task::block_in_place(|| PgCluster::start(PgClusterOpts::standbys(0))).unwrap();
    let primary = cluster.primary().name.clone();
    cluster
        .psql(&primary, "create role rotor login password 'first'")
        .unwrap();
    let moto = start_moto();
    let arn = sm(
        &moto,
        "print(sm.create_secret(Name='tidepool/rotor', SecretString=json.dumps({'username': 'rotor', 'password': 'first'}))['ARN'])")
        .unwrap();
    assert!(arn.starts_with("arn:"), "{arn}");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\n\
         [pool]\nmode = \"transaction\"\n\n\
         [health_check]\nuser = \"postgres\"\npassword = \"postgres\"\n\n{}\n\
         [[users]]\nname = \"rotor\"\npassword = \"client-side\"\npassword_secret = \"{arn}\"\n",
        free_port(),
        free_port(),
        cluster.backends_toml()
    );
    let tp = tokio::task::block_in_place(|| {
        Tidepool::start_with(
            &config,
            TidepoolOpts {
                env: moto_env(&moto),
                ..TidepoolOpts::default()
            },
        )
    })
    .unwrap();
    // The client logs in with its own password; tidepool logs in to the
    // backend with the secret's.
    assert_eq!(
        login(&tp, "rotor", "client-side", "app").await.unwrap(),
        "rotor"
    );

    // Rotation: the database and the secret change; a new backend
    // connection (another database, so another pool) is refused with the
    // kept password, and tidepool reads the secret again.
    cluster
        .psql(&primary, "alter role rotor password 'second'")
        .unwrap();
    sm(&moto, "sm.put_secret_value(SecretId='tidepool/rotor', SecretString=json.dumps({'username': 'rotor', 'password': 'second'})); print('ok')")
        .unwrap();
    assert_eq!(
        login(&tp, "rotor", "client-side", "postgres")
            .await
            .unwrap(),
        "rotor",
        "{}",
        tp.log_tail(30)
    );
    let reads = tp
        .log()
        .matches("read a backend password from Secrets Manager")
        .count();
    assert_eq!(reads, 2, "read at the first login and after the refusal");
}

/// A server that asks every client for a cleartext password and records
/// (user, password) before refusing it.
/// The (user, password) pairs a [`recording_server`] saw.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn recording_server() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let record = record.clone();
            std::thread::spawn(move || {
                let _ = serve_one(stream, &record);
            });
        }
    });
    (addr, seen)
}

fn serve_one(
    mut s: std::net::TcpStream,
    record: &Mutex<Vec<(String, String)>>,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let read_packet = |s: &mut std::net::TcpStream| -> std::io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut body)?;
        Ok(body)
    };
    let mut startup = read_packet(&mut s)?;
    if startup[..4] == 80877103u32.to_be_bytes() {
        s.write_all(b"N")?;
        startup = read_packet(&mut s)?;
    }
    let fields: Vec<String> = startup[4..]
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).to_string())
        .collect();
    let user = fields
        .iter()
        .position(|f| f == "user")
        .and_then(|i| fields.get(i + 1).cloned())
        .unwrap_or_default();
    // AuthenticationCleartextPassword.
    s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])?;
    let mut tag = [0u8; 1];
    s.read_exact(&mut tag)?;
    let body = read_packet(&mut s)?;
    let password = String::from_utf8_lossy(&body[..body.len().saturating_sub(1)]).to_string();
    record.lock().unwrap().push((user, password));
    let msg = b"SFATAL\0C28P01\0Mrecorded\0\0";
    let mut out = vec![b'E'];
    out.extend_from_slice(&((msg.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out)
}

#[test]
fn rds_iam_backends_get_a_signed_token_as_password() {
    let (addr, seen) = recording_server();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\n\
         [health_check]\nuser = \"monitor\"\nperiod = \"200ms\"\n\n\
         [backend_defaults]\nauth = \"rds_iam\"\nsslmode = \"prefer\"\nregion = \"eu-west-1\"\n\n\
         [[backends]]\nname = \"writer\"\nhost = \"127.0.0.1\"\nport = {}\nflag = \"always_primary\"\n\n\
         [[users]]\nname = \"app\"\npassword = \"app\"\n",
        free_port(),
        free_port(),
        addr.port()
    );
    let mut env = TidepoolOpts::default().env;
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        ),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        env.push((k.into(), v.into()));
    }
    let _tp = Tidepool::start_with(
        &config,
        TidepoolOpts {
            env,
            wait_ready: false,
            ..TidepoolOpts::default()
        },
    )
    .unwrap();
    wait_until(Duration::from_secs(20), "a login with a token", || {
        !seen.lock().unwrap().is_empty()
    })
    .unwrap();
    let (user, token) = seen.lock().unwrap()[0].clone();
    assert_eq!(user, "monitor");
    let prefix = format!(
        "127.0.0.1:{}/?Action=connect&DBUser=monitor&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F",
        addr.port()
    );
    assert!(token.starts_with(&prefix), "{token}");
    assert!(
        token.contains("%2Feu-west-1%2Frds-db%2Faws4_request&"),
        "signed for the backend's region and rds-db: {token}"
    );
    assert!(token.contains("&X-Amz-Expires=900&"), "{token}");
    assert!(token.contains("&X-Amz-Signature="), "{token}");
}
