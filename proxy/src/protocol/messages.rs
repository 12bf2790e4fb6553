//! Messages tidepool writes itself, and the few fields it reads.
//!
//! Writing goes through `pgwire`'s message types. Reading client frames is
//! done with small bounds-checked readers here, because a malformed client
//! message must become an ErrorResponse, never a panic.

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::{
    Message,
    cancel::CancelRequest,
    response::{CommandComplete, ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus},
    startup::{
        Authentication, BackendKeyData, NegotiateProtocolVersion, Password, SASLInitialResponse,
        SASLResponse, SecretKey, Startup,
    },
};

use super::frame::{self, Frame, FrameError, FrameRef};

fn encode<M: Message>(m: &M, out: &mut BytesMut) {
    // Encoding into a BytesMut cannot fail for these message types.
    m.encode(out).expect("encoding a protocol message");
}

/// Severity of a message tidepool reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An ErrorResponse with severity, SQLSTATE, message and an optional hint.
pub fn error_response(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    let mut fields = vec![
        (b'S', severity.as_str().to_string()),
        (b'V', severity.as_str().to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    if let Some(h) = hint {
        fields.push((b'H', h.to_string()));
    }
    encode(&ErrorResponse::new(fields), out);
}

pub fn notice(out: &mut BytesMut, message: &str) {
    let fields = vec![
        (b'S', "NOTICE".to_string()),
        (b'V', "NOTICE".to_string()),
        (b'C', "00000".to_string()),
        (b'M', message.to_string()),
    ];
    encode(&NoticeResponse::new(fields), out);
}

pub fn auth_ok(out: &mut BytesMut) {
    encode(&Authentication::Ok, out);
}

pub fn auth_cleartext(out: &mut BytesMut) {
    encode(&Authentication::CleartextPassword, out);
}

pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    encode(&Authentication::MD5Password(salt.to_vec()), out);
}

pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    encode(
        &Authentication::SASL(mechanisms.iter().map(|m| m.to_string()).collect()),
        out,
    );
}

pub fn auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    encode(
        &Authentication::SASLContinue(Bytes::copy_from_slice(data)),
        out,
    );
}

pub fn auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
    encode(
        &Authentication::SASLFinal(Bytes::copy_from_slice(data)),
        out,
    );
}

/// Written in place (a login sends one per server parameter).
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    out.reserve(1 + 4 + name.len() + value.len() + 2);
    out.put_u8(b'S');
    out.put_i32((4 + name.len() + 1 + value.len() + 1) as i32);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(value.as_bytes());
    out.put_u8(0);
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    encode(&BackendKeyData::new(pid, SecretKey::I32(secret)), out);
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status), out);
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    encode(&CommandComplete::new(tag.into()), out);
}

pub fn negotiate_protocol_version(out: &mut BytesMut, newest_minor: i32, unsupported: Vec<String>) {
    encode(
        &NegotiateProtocolVersion::new(newest_minor, unsupported),
        out,
    );
}

/// RowDescription of text columns (type `text`, OID 25).
pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
    let len = 4 + 2 + columns.iter().map(|c| c.len() + 1 + 18).sum::<usize>();
    out.put_u8(b'T');
    out.put_i32(len as i32);
    out.put_i16(columns.len() as i16);
    for c in columns {
        out.put_slice(c.as_bytes());
        out.put_u8(0);
        out.put_i32(0); // table oid
        out.put_i16(0); // column number
        out.put_i32(25); // text
        out.put_i16(-1); // variable length
        out.put_i32(-1); // no type modifier
        out.put_i16(0); // text format
    }
}

/// DataRow of text values (`None` is SQL NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<String>]) {
    let len = 4
        + 2
        + values
            .iter()
            .map(|v| 4 + v.as_ref().map_or(0, |s| s.len()))
            .sum::<usize>();
    out.put_u8(b'D');
    out.put_i32(len as i32);
    out.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(s) => {
                out.put_i32(s.len() as i32);
                out.put_slice(s.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
}

/// A simple Query message.
pub fn query(out: &mut BytesMut, sql: &str) {
    out.put_u8(b'Q');
    out.put_i32((4 + sql.len() + 1) as i32);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
}

/// A StartupMessage (protocol 3.0) towards a backend.
pub fn startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let mut s = Startup::new();
    for (k, v) in params {
        s.parameters.insert((*k).to_string(), (*v).to_string());
    }
    encode(&s, out);
}

pub fn password(out: &mut BytesMut, password: &str) {
    encode(&Password::new(password.into()), out);
}

pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    encode(
        &SASLInitialResponse::new(mechanism.into(), Some(Bytes::copy_from_slice(data))),
        out,
    );
}

pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    encode(&SASLResponse::new(Bytes::copy_from_slice(data)), out);
}

pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: &[u8]) {
    let key = match <[u8; 4]>::try_from(secret) {
        Ok(b) => SecretKey::I32(i32::from_be_bytes(b)),
        Err(_) => SecretKey::Bytes(Bytes::copy_from_slice(secret)),
    };
    encode(&CancelRequest::new(pid, key), out);
}

/// SSLRequest: the 8 bytes that ask a server for TLS before startup.
pub fn ssl_request(out: &mut BytesMut) {
    out.put_u32(8);
    out.put_u32(super::frame::SSL_REQUEST_CODE);
}

pub fn terminate(out: &mut BytesMut) {
    out.put_slice(b"X\0\0\0\x04");
}

// ---- readers -------------------------------------------------------------

/// The transaction status byte of a ReadyForQuery ('I', 'T' or 'E').
pub fn ready_status<'a>(f: impl Into<FrameRef<'a>>) -> u8 {
    f.into().body().first().copied().unwrap_or(b'I')
}

/// Name and value of a ParameterStatus.
pub fn read_parameter_status<'a>(
    f: impl Into<FrameRef<'a>>,
) -> Result<(String, String), FrameError> {
    let mut b = f.into().body();
    Ok((frame::cstr(&mut b)?, frame::cstr(&mut b)?))
}

/// Fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn read_error<'a>(f: impl Into<FrameRef<'a>>) -> ErrorFields {
    let mut out = ErrorFields::default();
    let mut b = f.into().body();
    while let Some((&kind, rest)) = b.split_first() {
        if kind == 0 {
            break;
        }
        b = rest;
        let Ok(v) = frame::cstr(&mut b) else { break };
        match kind {
            b'V' => out.severity = v,
            b'S' if out.severity.is_empty() => out.severity = v,
            b'C' => out.code = v,
            b'M' => out.message = v,
            _ => {}
        }
    }
    out
}

/// `f`, an ErrorResponse or NoticeResponse, with `from` replaced by `to`
/// in its message field; the other fields unchanged.
pub fn replace_in_error_message<'a>(f: impl Into<FrameRef<'a>>, from: &str, to: &str) -> Bytes {
    let f = f.into();
    let mut body = BytesMut::new();
    let mut b = f.body();
    while let Some((&kind, rest)) = b.split_first() {
        if kind == 0 {
            break;
        }
        let Some(end) = rest.iter().position(|&c| c == 0) else {
            break;
        };
        let v = &rest[..end];
        b = &rest[end + 1..];
        body.put_u8(kind);
        match (kind, std::str::from_utf8(v)) {
            (b'M', Ok(m)) => body.put_slice(m.replace(from, to).as_bytes()),
            _ => body.put_slice(v),
        }
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(f.tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
    out.freeze()
}

/// Process id and secret of a BackendKeyData.
pub fn read_backend_key_data(f: &Frame) -> Option<(i32, Bytes)> {
    let b = f.body();
    if b.len() < 8 {
        return None;
    }
    let pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((pid, f.bytes.slice(9..)))
}

/// The SQL text of a simple Query.
/// The text of a Query, for tidepool's own reading (routing, settings,
/// admin commands). Bytes that are not UTF-8 (a client encoding such as
/// LATIN1 or EUC_JP) are replaced here; the frame itself is forwarded as
/// the client sent it, and the server reads it in the client's encoding.
pub fn read_query<'a>(f: impl Into<FrameRef<'a>>) -> Result<std::borrow::Cow<'a, str>, FrameError> {
    let b = f.into().body();
    let end = memchr::memchr(0, b).unwrap_or(b.len());
    Ok(frame::text_lossy(&b[..end]))
}

/// Statement name and query text of a Parse.
pub fn read_parse<'a>(
    f: impl Into<FrameRef<'a>>,
) -> Result<(&'a str, std::borrow::Cow<'a, str>), FrameError> {
    let mut b = f.into().body();
    let name = frame::cstr_ref(&mut b)?;
    // Read, not forwarded: see read_query.
    let query = frame::cstr_lossy(&mut b)?;
    Ok((name, query))
}

/// The statement name of a Parse, without reading its query.
pub fn parse_name<'a>(f: impl Into<FrameRef<'a>>) -> Result<&'a str, FrameError> {
    frame::cstr_ref(&mut f.into().body())
}

/// Portal name, statement name, and the offset in the frame where the rest
/// of a Bind begins.
pub fn read_bind<'a>(f: impl Into<FrameRef<'a>>) -> Result<(&'a str, &'a str, usize), FrameError> {
    let f = f.into();
    let mut b = f.body();
    let portal = frame::cstr_ref(&mut b)?;
    let stmt = frame::cstr_ref(&mut b)?;
    let offset = f.bytes.len() - b.len();
    Ok((portal, stmt, offset))
}

/// Kind ('S' statement or 'P' portal) and name of a Describe or Close.
pub fn read_target<'a>(f: impl Into<FrameRef<'a>>) -> Result<(u8, &'a str), FrameError> {
    let (&kind, mut rest) = f
        .into()
        .body()
        .split_first()
        .ok_or_else(|| FrameError::BadStartup("empty Describe/Close".into()))?;
    Ok((kind, frame::cstr_ref(&mut rest)?))
}

/// A Parse like `f` but naming the statement `name`.
pub fn rename_parse<'a>(f: impl Into<FrameRef<'a>>, name: &str) -> Result<Bytes, FrameError> {
    let f = f.into();
    let mut b = f.body();
    frame::cstr(&mut b)?;
    Ok(with_header(f.tag, &[name.as_bytes(), b"\0", b]))
}

/// A Parse like `f` but with query text `query`.
pub fn replace_parse_query<'a>(
    f: impl Into<FrameRef<'a>>,
    query: &str,
) -> Result<Bytes, FrameError> {
    let mut b = f.into().body();
    let name = frame::cstr(&mut b)?;
    frame::cstr(&mut b)?; // the old query; `b` is left at the parameter types
    Ok(with_header(
        b'P',
        &[name.as_bytes(), b"\0", query.as_bytes(), b"\0", b],
    ))
}

/// A Bind like `f` but binding statement `stmt`.
pub fn rename_bind<'a>(f: impl Into<FrameRef<'a>>, stmt: &str) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::new();
    put_renamed_bind(&mut out, f, stmt)?;
    Ok(out.freeze())
}

/// [`rename_bind`], written at the end of `out` (nothing is written when
/// `f` is malformed).
pub fn put_renamed_bind<'a>(
    out: &mut BytesMut,
    f: impl Into<FrameRef<'a>>,
    stmt: &str,
) -> Result<(), FrameError> {
    let f = f.into();
    let (portal, _, offset) = read_bind(f)?;
    put_with_header(
        out,
        b'B',
        &[
            portal.as_bytes(),
            b"\0",
            stmt.as_bytes(),
            b"\0",
            &f.bytes[offset..],
        ],
    );
    Ok(())
}

/// A Describe or Close of kind `kind` naming `name`.
pub fn target_message(tag: u8, kind: u8, name: &str) -> Bytes {
    with_header(tag, &[&[kind], name.as_bytes(), b"\0"])
}

fn with_header(tag: u8, parts: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    put_with_header(&mut out, tag, parts);
    out.freeze()
}

/// A message of type `tag` whose body is `parts`, written at the end of
/// `out`.
fn put_with_header(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(len + 5);
    out.put_u8(tag);
    out.put_i32((len + 4) as i32);
    for p in parts {
        out.put_slice(p);
    }
}

/// Parses the first frame of `bytes` (for tests and small helpers).
pub fn frame_of(bytes: &[u8]) -> Frame {
    let mut b = BytesMut::from(bytes);
    frame::take(&mut b, frame::MAX_MESSAGE)
        .expect("valid frame")
        .expect("complete frame")
}

/// A message of type `tag` with `body`.
pub fn message(tag: u8, body: &[u8]) -> Frame {
    frame_of(&with_header(tag, &[body]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_status_is_encoded_as_pgwire_encodes_it() {
        for (k, v) in [
            ("client_encoding", "UTF8"),
            ("application_name", ""),
            ("é", "日本"),
        ] {
            let mut ours = BytesMut::new();
            parameter_status(&mut ours, k, v);
            let mut theirs = BytesMut::new();
            encode(
                &pgwire::messages::startup::ParameterStatus::new(k.into(), v.into()),
                &mut theirs,
            );
            assert_eq!(ours, theirs);
            let f = frame::take(&mut ours, usize::MAX).unwrap().unwrap();
            assert_eq!(
                read_parameter_status(&f).unwrap(),
                (k.to_string(), v.to_string())
            );
        }
    }

    #[test]
    fn error_response_round_trips_through_the_reader() {
        let mut out = BytesMut::new();
        error_response(
            &mut out,
            Severity::Fatal,
            "28P01",
            "password authentication failed",
            None,
        );
        let f = frame_of(&out);
        assert_eq!(f.tag, b'E');
        let e = read_error(&f);
        assert_eq!(e.code, "28P01");
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.message, "password authentication failed");
    }

    #[test]
    fn an_error_message_is_rewritten_and_its_other_fields_kept() {
        let orig = with_header(
            b'E',
            &[b"SERROR\0C42P05\0Mprepared statement \"tp_1\" already exists\0Rx\xe9\0\0"],
        );
        let f = frame_of(&replace_in_error_message(
            &frame_of(&orig),
            "\"tp_1\"",
            "\"s1\"",
        ));
        let e = read_error(&f);
        assert_eq!(e.code, "42P05");
        assert_eq!(e.message, "prepared statement \"s1\" already exists");
        // A field that is not UTF-8 is copied byte for byte.
        assert!(f.bytes.ends_with(b"Rx\xe9\0\0"));
        assert_eq!(f.bytes.len(), orig.len() - 2);
    }

    #[test]
    fn bind_rename_keeps_parameters() {
        let mut body = BytesMut::new();
        body.put_slice(b"p1\0s0\0");
        body.put_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
        let orig = with_header(b'B', &[&body]);
        let f = frame_of(&orig);
        let renamed = frame_of(&rename_bind(&f, "tidepool_9").unwrap());
        let (portal, stmt, off) = read_bind(&renamed).unwrap();
        assert_eq!((portal, stmt), ("p1", "tidepool_9"));
        assert_eq!(&renamed.bytes[off..], &body[6..]);
    }

    #[test]
    fn parse_rename_keeps_query() {
        let orig = with_header(b'P', &[b"s1\0SELECT $1\0\0\x01\0\0\0\x17"]);
        let renamed = frame_of(&rename_parse(&frame_of(&orig), "").unwrap());
        assert_eq!(read_parse(&renamed).unwrap(), ("", "SELECT $1".into()));
        assert_eq!(&renamed.body()[1..], &orig[8..]);
    }

    #[test]
    fn malformed_client_messages_are_errors_not_panics() {
        let f = frame_of(b"P\0\0\0\x06ab");
        assert!(read_parse(&f).is_err());
        let f = frame_of(b"D\0\0\0\x04");
        assert!(read_target(&f).is_err());
    }
}
