//! Raw protocol bytes for tests that speak to a server below the level of
//! a driver: malformed, abandoned or unusual message sequences.

/// A StartupMessage (protocol 3.0) with `params`.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// A message: `tag`, length, `body`.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Connects to `port` on 127.0.0.1 and logs in as `user` (a user the
/// server lets in without a password) to `database` with extra startup
/// `params`; returns the connection once it is ready for a query.
pub async fn login(
    port: u16,
    user: &str,
    database: &str,
    params: &[(&str, &str)],
) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut all = vec![("user", user), ("database", database)];
    all.extend_from_slice(params);
    s.write_all(&startup_packet(&all)).await?;
    let mut seen = Vec::new();
    while !seen.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let mut b = [0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut b)).await??;
        anyhow::ensure!(n > 0, "the server closed during login: {seen:?}");
        seen.extend_from_slice(&b[..n]);
    }
    Ok(s)
}
