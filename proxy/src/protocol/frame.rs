//! Where one protocol message ends and the next begins.
//!
//! After startup every message is `tag:u8, len:i32, body[len-4]`. The startup
//! phase has no tag: `len:i32, code:i32, …`. Checking that a whole frame is
//! buffered is separate from taking it, so a reader can keep reading until
//! [`check`] says a frame is complete.

use bytes::{Buf, Bytes, BytesMut};

/// Largest startup packet accepted (PostgreSQL's own limit).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Largest regular message accepted from a client (PostgreSQL's limit, 1 GB).
pub const MAX_MESSAGE: usize = 0x3fff_ffff;

pub const SSL_REQUEST_CODE: u32 = 80877103;
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
pub const CANCEL_REQUEST_CODE: u32 = 80877102;

/// The frames of one turn, read in place (an extended-protocol
/// transaction sends five): a few kept inline (in the boxed work of a
/// busy session), so that a transaction's turns allocate no list; more
/// spill to the heap.
pub type Frames<'a> = smallvec::SmallVec<[FrameRef<'a>; 8]>;

/// A whole message: tag, length and body, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// The whole frame, tag and length included, ready to forward as is.
    pub bytes: Bytes,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// A copy holding only its own bytes: a frame taken off a read shares
    /// the whole read's buffer, which a frame kept long would keep alive.
    pub fn detached(&self) -> Frame {
        Frame {
            tag: self.tag,
            bytes: Bytes::copy_from_slice(&self.bytes),
        }
    }
}

/// A whole message read in place, in the buffer it arrived in: what a
/// server's replies are handled as, with no copy and no reference count
/// per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub tag: u8,
    /// The whole frame, tag and length included.
    pub bytes: &'a [u8],
}

impl<'a> FrameRef<'a> {
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[5..]
    }

    /// An owned copy, for a frame kept beyond the buffer it was read in.
    pub fn detached(&self) -> Frame {
        Frame {
            tag: self.tag,
            bytes: Bytes::copy_from_slice(self.bytes),
        }
    }
}

impl<'a> From<&'a Frame> for FrameRef<'a> {
    fn from(f: &'a Frame) -> FrameRef<'a> {
        FrameRef {
            tag: f.tag,
            bytes: &f.bytes,
        }
    }
}

/// How many bytes at the front of `buf` are whole frames (checked as
/// [`check`] checks one).
pub fn whole(buf: &[u8], max: usize) -> Result<usize, FrameError> {
    let mut at = 0;
    while let Some(n) = check(&buf[at..], max)? {
        at += n;
    }
    Ok(at)
}

/// The frames of `buf`, which holds whole frames only (see [`whole`]).
pub fn each(buf: &[u8]) -> impl Iterator<Item = FrameRef<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let head = rest.get(..5)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize + 1;
        let (bytes, after) = rest.split_at(len.min(rest.len()));
        rest = after;
        Some(FrameRef {
            tag: bytes[0],
            bytes,
        })
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {0} bytes exceeds the limit of {1} bytes")]
    TooLong(usize, usize),
    #[error("invalid startup packet: {0}")]
    BadStartup(String),
}

/// Returns the length of the complete frame at the front of `buf`, if any.
pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len as i64));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLong(total, max));
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Takes one whole frame off the front of `buf`.
pub fn take(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    match check(buf, max)? {
        Some(n) => {
            let bytes = buf.split_to(n).freeze();
            Ok(Some(Frame {
                tag: bytes[0],
                bytes,
            }))
        }
        None => Ok(None),
    }
}

/// The first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: Bytes,
    },
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Parses a startup-phase packet if a whole one is buffered.
pub fn take_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(FrameError::BadLength(len as i64));
    }
    let len = len as usize;
    if len > MAX_STARTUP_PACKET {
        return Err(FrameError::TooLong(len, MAX_STARTUP_PACKET));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut pkt = buf.split_to(len).freeze();
    pkt.advance(4);
    let code = pkt.get_u32();
    match code {
        SSL_REQUEST_CODE if len == 8 => Ok(Some(StartupPacket::SslRequest)),
        GSSENC_REQUEST_CODE if len == 8 => Ok(Some(StartupPacket::GssEncRequest)),
        CANCEL_REQUEST_CODE if len >= 12 => {
            let pid = pkt.get_i32();
            Ok(Some(StartupPacket::Cancel { pid, secret: pkt }))
        }
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => Err(
            FrameError::BadStartup(format!("request code {code} with length {len}")),
        ),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            let params = parse_params(&pkt)?;
            Ok(Some(StartupPacket::Startup {
                major,
                minor,
                params,
            }))
        }
    }
}

/// Parses `name\0value\0…\0` of a StartupMessage. The strings' NULs are
/// found in one scan of the packet, the list is checked as UTF-8 in one
/// pass, and each string is cut out between its NULs: a dozen short
/// strings each searched for and checked on its own cost several times
/// as much.
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    // Each string's NUL, up to the list's end: the NUL of an empty name.
    let mut nuls: smallvec::SmallVec<[usize; 16]> = smallvec::SmallVec::new();
    let mut start = 0;
    let mut end = None;
    for nul in memchr::memchr_iter(0, body) {
        if nul == start && nuls.len().is_multiple_of(2) {
            end = Some(nul);
            break;
        }
        nuls.push(nul);
        start = nul + 1;
    }
    let end = end.ok_or_else(|| FrameError::BadStartup("missing string terminator".into()))?;
    if end + 1 != body.len() {
        return Err(FrameError::BadStartup("data after the terminator".into()));
    }
    let text = std::str::from_utf8(&body[..end])
        .map_err(|_| FrameError::BadStartup("string is not valid UTF-8".into()))?;
    let mut params = Vec::with_capacity(nuls.len() / 2);
    let mut start = 0;
    for pair in nuls.chunks_exact(2) {
        let (name_end, value_end) = (pair[0], pair[1]);
        params.push((
            text[start..name_end].to_string(),
            text[name_end + 1..value_end].to_string(),
        ));
        start = value_end + 1;
    }
    Ok(params)
}

/// Reads a NUL-terminated UTF-8 string, advancing `buf`.
pub fn cstr(buf: &mut &[u8]) -> Result<String, FrameError> {
    cstr_ref(buf).map(str::to_string)
}

/// As [`cstr`], borrowed from `buf`. Inlined where it is called: the
/// empty name (the unnamed statement or portal, the most frequent) is one
/// comparison there; any other is read by [`cstr_ref_named`].
#[inline]
pub fn cstr_ref<'a>(buf: &mut &'a [u8]) -> Result<&'a str, FrameError> {
    if let [0, rest @ ..] = *buf {
        *buf = rest;
        return Ok("");
    }
    cstr_ref_named(buf)
}

/// [`cstr_ref`] of a string that is not empty (or not terminated).
#[inline(never)]
fn cstr_ref_named<'a>(buf: &mut &'a [u8]) -> Result<&'a str, FrameError> {
    let b: &'a [u8] = buf;
    let end =
        name_end(b).ok_or_else(|| FrameError::BadStartup("missing string terminator".into()))?;
    let s = std::str::from_utf8(&b[..end])
        .map_err(|_| FrameError::BadStartup("string is not valid UTF-8".into()))?;
    *buf = &b[end + 1..];
    Ok(s)
}

/// Where the NUL ending the name at the front of `b` is. Names (of
/// statements, portals, settings) are short and most often empty: their
/// first bytes are looked at one by one, which is cheaper than setting up
/// `memchr`'s vector search; a longer string is searched by `memchr`.
fn name_end(b: &[u8]) -> Option<usize> {
    const SHORT: usize = 16;
    match b.iter().take(SHORT).position(|&c| c == 0) {
        Some(i) => Some(i),
        None if b.len() <= SHORT => None,
        None => memchr::memchr(0, &b[SHORT..]).map(|i| i + SHORT),
    }
}

/// `bytes` as text, with what is not UTF-8 replaced. Checked the fast way
/// first: nearly all query text is ASCII (`is_ascii` reads whole words,
/// about half of what `str::from_utf8` takes on a short statement), and
/// nearly all the rest valid UTF-8.
pub fn text_lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        return std::borrow::Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// A NUL-terminated string, with bytes that are not UTF-8 replaced (text
/// in the client's encoding that tidepool only reads).
pub fn cstr_lossy<'a>(buf: &mut &'a [u8]) -> Result<std::borrow::Cow<'a, str>, FrameError> {
    let b: &'a [u8] = buf;
    let end = memchr::memchr(0, b)
        .ok_or_else(|| FrameError::BadStartup("missing string terminator".into()))?;
    *buf = &b[end + 1..];
    Ok(text_lossy(&b[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// A frame kept long is detached from the read it came in: its bytes
    /// are its own, not a slice of the whole buffer.
    #[test]
    fn a_detached_frame_holds_only_its_own_bytes() {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        buf.put_u8(b'P');
        buf.put_u32(9);
        buf.put_slice(b"\0q\0\0\0");
        buf.put_u8(b'S');
        buf.put_u32(4);
        let f = take(&mut buf, MAX_MESSAGE).unwrap().unwrap();
        let kept = f.detached();
        assert_eq!(kept, f);
        let read = buf.as_ptr() as usize - f.bytes.len()..buf.as_ptr() as usize + buf.capacity();
        assert!(read.contains(&(f.bytes.as_ptr() as usize)));
        assert!(!read.contains(&(kept.bytes.as_ptr() as usize)));
    }

    #[test]
    fn names_of_every_length_end_at_their_terminator() {
        // Around the length where the byte-by-byte look gives way to memchr.
        for len in [0, 1, 15, 16, 17, 40] {
            let name = "n".repeat(len);
            let mut body = format!("{name}\0rest\0").into_bytes();
            let mut b = &body[..];
            assert_eq!(cstr_ref(&mut b).unwrap(), name);
            assert_eq!(b, b"rest\0");
            // Without a terminator, at any length, the string is refused.
            body.retain(|&c| c != 0);
            assert!(cstr_ref(&mut &body[..len]).is_err());
            assert!(cstr_ref(&mut &body[..]).is_err());
        }
    }

    /// Text in UTF-8 is read in place; other bytes (a LATIN1 client's
    /// query) are replaced, never refused.
    #[test]
    fn text_is_read_in_place_unless_it_is_not_utf8() {
        let utf8 = "SELECT 'größe', '表'".as_bytes();
        assert!(matches!(text_lossy(utf8), std::borrow::Cow::Borrowed(s) if s.as_bytes() == utf8));
        let ascii = b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;";
        assert!(
            matches!(text_lossy(ascii), std::borrow::Cow::Borrowed(s) if s.as_bytes() == ascii)
        );
        let latin1 = b"SELECT 'gr\xf6\xdfe'";
        assert_eq!(text_lossy(latin1), "SELECT 'gr\u{fffd}\u{fffd}e'");
    }

    fn startup(params: &[(&str, &str)]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_u32(196608);
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::new();
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(&body);
        out
    }

    #[test]
    fn startup_message_waits_for_all_bytes_then_parses() {
        let full = startup(&[("user", "app"), ("database", "db")]);
        let mut partial = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(take_startup(&mut partial).unwrap(), None);
        let mut buf = full.clone();
        match take_startup(&mut buf).unwrap().unwrap() {
            StartupPacket::Startup { major, params, .. } => {
                assert_eq!(major, 3);
                assert_eq!(params[0], ("user".into(), "app".into()));
                assert_eq!(params[1], ("database".into(), "db".into()));
            }
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
    }

    /// The startup list read string by string, as the protocol defines it.
    fn params_one_by_one(mut body: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
        let mut params = Vec::new();
        loop {
            let name = cstr(&mut body)?;
            if name.is_empty() {
                return if body.is_empty() {
                    Ok(params)
                } else {
                    Err(FrameError::BadStartup("data after the terminator".into()))
                };
            }
            let value = cstr(&mut body)?;
            params.push((name, value));
        }
    }

    /// Every body of up to six bytes from NUL, ASCII, a two-byte UTF-8
    /// character's halves and a byte never valid in UTF-8 is taken or
    /// refused by the one-pass parse exactly as string by string: the
    /// same names and values (empty values among them), and a refusal
    /// wherever that is one (a name without its value, data after the
    /// end, text that is not UTF-8).
    #[test]
    fn startup_settings_parse_as_read_string_by_string() {
        let alphabet = [0u8, b'a', b'=', 0xc3, 0xa9, 0xff];
        let mut checked = 0;
        for len in 0..=6u32 {
            for n in 0..alphabet.len().pow(len) {
                let mut code = n;
                let body: Vec<u8> = (0..len)
                    .map(|_| {
                        let c = alphabet[code % alphabet.len()];
                        code /= alphabet.len();
                        c
                    })
                    .collect();
                match (parse_params(&body), params_one_by_one(&body)) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{body:?}"),
                    (Err(_), Err(_)) => {}
                    (a, b) => panic!("{body:?}: one pass {a:?}, one by one {b:?}"),
                }
                checked += 1;
            }
        }
        assert!(checked > 50_000);
        let many: Vec<(String, String)> = (0..40)
            .map(|i| (format!("setting_{i}"), "x".repeat(i)))
            .collect();
        let pairs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match take_startup(&mut startup(&pairs)).unwrap().unwrap() {
            StartupPacket::Startup { params, .. } => assert_eq!(params, many),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_and_oversized_startup_packets_are_errors() {
        let mut tiny = BytesMut::from(&[0u8, 0, 0, 3, 1, 2, 3][..]);
        assert!(take_startup(&mut tiny).is_err());
        let mut huge = BytesMut::from(&[0u8, 1, 0, 0, 0, 3, 0, 0][..]);
        assert!(matches!(
            take_startup(&mut huge),
            Err(FrameError::TooLong(..))
        ));
        let mut unterminated = BytesMut::new();
        unterminated.put_i32(12);
        unterminated.put_u32(196608);
        unterminated.put_slice(b"user");
        assert!(take_startup(&mut unterminated).is_err());
    }

    #[test]
    fn ssl_and_cancel_requests_are_recognised() {
        let mut ssl = BytesMut::new();
        ssl.put_i32(8);
        ssl.put_u32(SSL_REQUEST_CODE);
        assert_eq!(
            take_startup(&mut ssl).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        let mut cancel = BytesMut::new();
        cancel.put_i32(16);
        cancel.put_u32(CANCEL_REQUEST_CODE);
        cancel.put_i32(42);
        cancel.put_i32(7);
        match take_startup(&mut cancel).unwrap().unwrap() {
            StartupPacket::Cancel { pid, secret } => {
                assert_eq!(pid, 42);
                assert_eq!(&secret[..], &7i32.to_be_bytes());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_are_split_only_when_complete() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09abcd\0S\0\0"[..]);
        let f = take(&mut buf, MAX_MESSAGE).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"abcd\0");
        assert_eq!(take(&mut buf, MAX_MESSAGE).unwrap(), None);
        let mut bad = BytesMut::from(&b"Q\0\0\0\x02"[..]);
        assert!(take(&mut bad, MAX_MESSAGE).is_err());
    }

    #[test]
    fn whole_frames_are_read_in_place_and_a_partial_one_is_left() {
        // Three whole frames (the second with an empty body), then the
        // first bytes of a fourth.
        let buf = b"T\0\0\0\x06ab1\0\0\0\x04C\0\0\0\x05xZ\0\0\0";
        let n = whole(buf, MAX_MESSAGE).unwrap();
        assert_eq!(n, 7 + 5 + 6);
        let frames: Vec<FrameRef> = each(&buf[..n]).collect();
        let tags: Vec<u8> = frames.iter().map(|f| f.tag).collect();
        assert_eq!(tags, b"T1C");
        assert_eq!(frames[0].body(), b"ab");
        assert_eq!(frames[1].body(), b"");
        assert_eq!(frames[2].bytes, b"C\0\0\0\x05x");
        // The same frames as `take` gives.
        let mut owned = BytesMut::from(&buf[..]);
        for f in &frames {
            let t = take(&mut owned, MAX_MESSAGE).unwrap().unwrap();
            assert_eq!(FrameRef::from(&t), *f);
        }
        assert_eq!(whole(b"", MAX_MESSAGE).unwrap(), 0);
        assert_eq!(whole(b"Z\0\0", MAX_MESSAGE).unwrap(), 0);
        // A bad length anywhere in the buffer is an error.
        assert!(whole(b"1\0\0\0\x04Q\0\0\0\x02", MAX_MESSAGE).is_err());
        assert!(matches!(
            whole(b"1\0\0\0\x04D\0\0\x01\0", 100),
            Err(FrameError::TooLong(257, 100))
        ));
    }
}
