//! Frame splitting: any byte stream is cut into whole messages or refused
//! with an error, never a panic, never a frame longer than the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidepool::protocol::frame;

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    // Fed whole, then in two pieces: the same frames either way.
    let whole = split(&[data]);
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    let pieces = split(&[&data[..cut], &data[cut..]]);
    assert_eq!(whole, pieces);
});

/// The frames of `chunks` fed one after the other, up to the first error.
fn split(chunks: &[&[u8]]) -> Vec<(u8, Vec<u8>)> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match frame::take(&mut buf, MAX) {
                Ok(Some(f)) => {
                    assert!(f.bytes.len() <= MAX + 1);
                    assert_eq!(f.bytes[0], f.tag);
                    out.push((f.tag, f.body().to_vec()));
                }
                Ok(None) => break,
                Err(_) => return out,
            }
        }
    }
    out
}
