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
    Ok(login_keyed(port, user, database, params).await?.0)
}

/// As [`login`], also returning the process id of the BackendKeyData the
/// server sent.
pub async fn login_keyed(
    port: u16,
    user: &str,
    database: &str,
    params: &[(&str, &str)],
) -> anyhow::Result<(tokio::net::TcpStream, i32)> {
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
    let mut pid = None;
    let mut rest = &seen[..];
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest[0] == b'K' && len >= 8 && rest.len() >= 9 {
            pid = Some(i32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]));
        }
        rest = &rest[(1 + len).min(rest.len())..];
    }
    let pid = pid.ok_or_else(|| anyhow::anyhow!("no BackendKeyData at login"))?;
    Ok((s, pid))
}

/// Reads one message from `s` (within 10 s): its tag and body.
pub async fn read_message(s: &mut tokio::net::TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut head)).await??;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    anyhow::ensure!(len >= 4, "bad message length {len}");
    let mut body = vec![0u8; len as usize - 4];
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut body)).await??;
    Ok((head[0], body))
}

/// Reads messages from `s` until one tagged `tag` arrives (within 10 s
/// each); returns its body.
pub async fn read_until(s: &mut tokio::net::TcpStream, tag: u8) -> anyhow::Result<Vec<u8>> {
    loop {
        let (t, body) = read_message(s).await?;
        if t == tag {
            return Ok(body);
        }
    }
}
