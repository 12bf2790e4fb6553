//! Reading Pgpool-II's files: pgpool.conf settings, pool_hba.conf rules and
//! pool_passwd entries (with AES-encrypted ones decrypted by the pgpoolkey).

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use sha1::{Digest, Sha1};

/// One `name = value` line of pgpool.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    /// The value, unquoted.
    pub value: String,
    /// The line as written (without its trailing comment), for the output.
    pub line: String,
}

/// The settings of a pgpool.conf in file order; a name set twice keeps its
/// last value, as Pgpool-II does. Commented-out lines are defaults, not
/// settings.
pub fn settings(text: &str) -> Vec<Setting> {
    let mut out: Vec<Setting> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim().to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let (value, written) = value_of(rest.trim());
        let s = Setting {
            line: format!("{name} = {written}"),
            name,
            value,
        };
        match out.iter_mut().find(|o| o.name == s.name) {
            Some(o) => *o = s,
            None => out.push(s),
        }
    }
    out
}

/// A value and its text as written: `'quoted'` (with `''` or `\'` for a
/// quote inside) or bare up to a comment.
fn value_of(rest: &str) -> (String, &str) {
    if let Some(body) = rest.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '\'' if chars.peek().is_some_and(|(_, n)| *n == '\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => return (value, &rest[..i + 2]),
                c => value.push(c),
            }
        }
        return (value, rest);
    }
    let bare = rest.split('#').next().unwrap_or("").trim();
    (bare.to_string(), bare)
}

/// One pool_hba.conf rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaLine {
    pub fields: Vec<String>,
    pub line: String,
}

/// The rules of a pool_hba.conf (fields split on white space; quoted
/// fields kept whole).
pub fn hba_lines(text: &str) -> Vec<HbaLine> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| HbaLine {
            fields: split_fields(l),
            line: l.to_string(),
        })
        .collect()
}

fn split_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    fields.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        fields.push(cur);
    }
    fields
}

/// What a pool_passwd entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// A password tidepool can use both ways.
    Plain(String),
    /// An md5 or SCRAM verifier: enough to check clients, not to log in
    /// to the backends.
    Verifier(String),
    /// AES-encrypted and no key (or the wrong one) to read it.
    Unreadable(String),
}

/// `user:secret` lines of pool_passwd.
pub fn passwd(text: &str, key: Option<&str>) -> Vec<(String, Secret)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(user, secret)| (user.to_string(), secret_of(secret, key)))
        .collect()
}

fn secret_of(secret: &str, key: Option<&str>) -> Secret {
    if let Some(plain) = secret.strip_prefix("TEXT") {
        return Secret::Plain(plain.to_string());
    }
    if let Some(enc) = secret.strip_prefix("AES") {
        return match key.and_then(|k| aes_decrypt(enc, k)) {
            Some(plain) => Secret::Plain(plain),
            None => Secret::Unreadable(secret.to_string()),
        };
    }
    if secret.starts_with("md5") || secret.starts_with("SCRAM-SHA-256$") {
        return Secret::Verifier(secret.to_string());
    }
    Secret::Plain(secret.to_string())
}

/// Decrypts a pool_passwd (or pgpool.conf) `AES…` value: base64 of
/// AES-256-CBC with PKCS#7 padding, key and IV derived from the pgpoolkey
/// as OpenSSL's `EVP_BytesToKey(aes-256-cbc, sha1, no salt, 1 round)`,
/// which is what Pgpool-II's `pg_enc` uses.
pub fn aes_decrypt(b64: &str, pgpoolkey: &str) -> Option<String> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let mut derived = Vec::with_capacity(60);
    let mut prev: Vec<u8> = Vec::new();
    while derived.len() < 48 {
        let mut h = Sha1::new();
        h.update(&prev);
        h.update(pgpoolkey.as_bytes());
        prev = h.finalize().to_vec();
        derived.extend_from_slice(&prev);
    }
    let (key, iv) = (&derived[..32], &derived[32..48]);
    let dec = cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv).ok()?;
    let plain = dec.decrypt_padded_vec_mut::<Pkcs7>(&data).ok()?;
    String::from_utf8(plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_quoted_bare_and_with_comments() {
        let s = settings(
            "# a comment\n#port = 1\nport = 9999   # the port\n\
             listen_addresses = '*'\nfailover_command = 'a ''b'' %d' # x\n\
             reset_query_list = 'ABORT; DISCARD ALL'\nport = 9998\nnot a setting\n",
        );
        let v: Vec<(&str, &str)> = s
            .iter()
            .map(|s| (s.name.as_str(), s.value.as_str()))
            .collect();
        assert_eq!(
            v,
            [
                ("port", "9998"),
                ("listen_addresses", "*"),
                ("failover_command", "a 'b' %d"),
                ("reset_query_list", "ABORT; DISCARD ALL"),
            ]
        );
        assert_eq!(s[2].line, "failover_command = 'a ''b'' %d'");
    }

    #[test]
    fn hba_fields() {
        let l = hba_lines("# c\nhost all all 0.0.0.0/0 md5 # x\nhost \"my db\" u ::1/128 trust\n");
        assert_eq!(l[0].fields, ["host", "all", "all", "0.0.0.0/0", "md5"]);
        assert_eq!(l[1].fields[1], "my db");
    }

    #[test]
    fn passwd_entries() {
        let p = passwd(
            "a:TEXTsecret\nb:md5aabbcc\nc:SCRAM-SHA-256$4096:x$y:z\nd:AESxyz\ne:plain\n",
            None,
        );
        assert_eq!(p[0].1, Secret::Plain("secret".into()));
        assert!(matches!(p[1].1, Secret::Verifier(_)));
        assert!(matches!(p[2].1, Secret::Verifier(_)));
        assert!(matches!(p[3].1, Secret::Unreadable(_)));
        assert_eq!(p[4].1, Secret::Plain("plain".into()));
    }

    #[test]
    fn aes_entries_read_with_the_pgpoolkey_as_pg_enc_wrote_them() {
        // `pg_enc -k KEYFILE 's3cret pass'` (Pgpool-II 4.3.5), the key file
        // holding "tidepool-key".
        let enc = "H52hdTpC5kbSPwHQXqlFng==";
        assert_eq!(
            aes_decrypt(enc, "tidepool-key").as_deref(),
            Some("s3cret pass")
        );
        assert_eq!(aes_decrypt(enc, "another key"), None);
        let p = passwd(&format!("app:AES{enc}\n"), Some("tidepool-key"));
        assert_eq!(p[0].1, Secret::Plain("s3cret pass".into()));
    }
}
