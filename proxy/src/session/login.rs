//! Logging a client in without a server connection (transaction mode): the
//! ParameterStatus values a pool's last login reported, with the client's
//! own settings in the form the server would report them. A setting whose
//! reported form tidepool cannot know for sure is not answered here: the
//! login then goes through a server connection, which also refuses a bad
//! value with the server's SQLSTATE.

use std::{collections::BTreeMap, sync::Arc};

use bytes::BytesMut;

use crate::{backend::ServerParameters, protocol::messages};

/// What a client is told at login: the server's parameters as a pool's
/// last login reported them (shared, not copied per client), with the
/// client's own settings in the server's form.
#[derive(Debug, Default)]
pub struct Reported {
    server: Arc<ServerParameters>,
    /// Keyed by the server's spelling of the name when it reports it.
    own: BTreeMap<String, String>,
}

impl Reported {
    /// What a server connection reported itself.
    pub fn of_server(server: Arc<ServerParameters>) -> Reported {
        Reported {
            server,
            own: BTreeMap::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.own
            .get(name)
            .or_else(|| self.server.values().get(name))
            .map(String::as_str)
    }

    /// One ParameterStatus per parameter, in name order: the server's
    /// messages as encoded once, with the client's own settings written
    /// in their places.
    pub fn encode(&self, out: &mut BytesMut) {
        let server = &*self.server;
        let encoded = server.encoded();
        out.reserve(encoded.len() + 64 * self.own.len());
        // The server's messages up to `copied` are written.
        let mut copied = 0;
        let mut own = self.own.iter().peekable();
        for (i, k) in server.values().keys().enumerate() {
            if own.peek().is_none() {
                break;
            }
            let at = server.message(i);
            while let Some((ok, ov)) = own.next_if(|(ok, _)| *ok < k) {
                out.extend_from_slice(&encoded[copied..at.start]);
                copied = at.start;
                messages::parameter_status(out, ok, ov);
            }
            if let Some((_, ov)) = own.next_if(|(ok, _)| *ok == k) {
                out.extend_from_slice(&encoded[copied..at.start]);
                copied = at.end;
                messages::parameter_status(out, k, ov);
            }
        }
        out.extend_from_slice(&encoded[copied..]);
        for (ok, ov) in own {
            messages::parameter_status(out, ok, ov);
        }
    }
}

/// What to report for a client whose startup parameters are `params`,
/// given the `server`'s reported parameters; None when a server
/// connection must answer.
pub fn fast_reported(
    server: &Arc<ServerParameters>,
    params: &[(String, String)],
) -> Option<Reported> {
    let values = server.values();
    let mut own = BTreeMap::new();
    for (name, value) in params {
        let name = name.to_ascii_lowercase();
        let shown = match name.as_str() {
            // Reported as given; any text is valid.
            "application_name" => value.clone(),
            // Not reported; any text is valid.
            "fallback_application_name" => continue,
            "extra_float_digits" => match value.trim().parse::<i32>() {
                Ok(-15..=3) => continue,
                _ => return None,
            },
            // The server reports the encoding's canonical name.
            "client_encoding" => canonical_encoding(value)?.to_string(),
            // The server's own form of these is not spelled out here: take
            // the fast way only when the client asks for what the server
            // already has.
            "datestyle" | "timezone" | "intervalstyle" => {
                let (_, current) = values.iter().find(|(k, _)| k.eq_ignore_ascii_case(&name))?;
                if !current.eq_ignore_ascii_case(value.trim()) {
                    return None;
                }
                current.clone()
            }
            _ => return None,
        };
        let key = values
            .keys()
            .find(|k| k.eq_ignore_ascii_case(&name))
            .cloned()
            .unwrap_or(name);
        own.insert(key, shown);
    }
    Some(Reported {
        server: server.clone(),
        own,
    })
}

/// PostgreSQL's name for a client encoding, as `client_encoding` reports
/// it: the name is matched the server's way (case and punctuation ignored)
/// against the encodings and their common aliases.
pub fn canonical_encoding(name: &str) -> Option<&'static str> {
    let key: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const NAMES: &[(&str, &str)] = &[
        ("sqlascii", "SQL_ASCII"),
        ("utf8", "UTF8"),
        ("unicode", "UTF8"),
        ("eucjp", "EUC_JP"),
        ("euccn", "EUC_CN"),
        ("euckr", "EUC_KR"),
        ("euctw", "EUC_TW"),
        ("eucjis2004", "EUC_JIS_2004"),
        ("muleinternal", "MULE_INTERNAL"),
        ("latin1", "LATIN1"),
        ("iso88591", "LATIN1"),
        ("latin2", "LATIN2"),
        ("iso88592", "LATIN2"),
        ("latin3", "LATIN3"),
        ("iso88593", "LATIN3"),
        ("latin4", "LATIN4"),
        ("iso88594", "LATIN4"),
        ("latin5", "LATIN5"),
        ("iso88599", "LATIN5"),
        ("latin6", "LATIN6"),
        ("iso885910", "LATIN6"),
        ("latin7", "LATIN7"),
        ("iso885913", "LATIN7"),
        ("latin8", "LATIN8"),
        ("iso885914", "LATIN8"),
        ("latin9", "LATIN9"),
        ("iso885915", "LATIN9"),
        ("latin10", "LATIN10"),
        ("iso885916", "LATIN10"),
        ("iso88595", "ISO_8859_5"),
        ("iso88596", "ISO_8859_6"),
        ("iso88597", "ISO_8859_7"),
        ("iso88598", "ISO_8859_8"),
        ("win866", "WIN866"),
        ("win874", "WIN874"),
        ("win1250", "WIN1250"),
        ("win1251", "WIN1251"),
        ("win1252", "WIN1252"),
        ("win1253", "WIN1253"),
        ("win1254", "WIN1254"),
        ("win1255", "WIN1255"),
        ("win1256", "WIN1256"),
        ("win1257", "WIN1257"),
        ("win1258", "WIN1258"),
        ("koi8r", "KOI8R"),
        ("koi8u", "KOI8U"),
        ("sjis", "SJIS"),
        ("shiftjis", "SJIS"),
        ("shiftjis2004", "SHIFT_JIS_2004"),
        ("big5", "BIG5"),
        ("gbk", "GBK"),
        ("uhc", "UHC"),
        ("gb18030", "GB18030"),
        ("johab", "JOHAB"),
    ];
    NAMES.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("client_encoding".to_string(), "UTF8".to_string()),
            ("DateStyle".to_string(), "ISO, MDY".to_string()),
            ("TimeZone".to_string(), "Etc/UTC".to_string()),
            ("application_name".to_string(), String::new()),
        ])
    }

    fn server() -> Arc<ServerParameters> {
        Arc::new(ServerParameters::new(values()))
    }

    /// The ParameterStatus messages `r` sends, in order.
    fn sent(r: &Reported) -> Vec<(String, String)> {
        let mut out = BytesMut::new();
        r.encode(&mut out);
        let mut sent = Vec::new();
        while let Some(f) = crate::protocol::frame::take(&mut out, usize::MAX).unwrap() {
            sent.push(messages::read_parameter_status(&f).unwrap());
        }
        sent
    }

    fn p(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn encodings_are_reported_by_the_servers_name() {
        assert_eq!(canonical_encoding("utf-8"), Some("UTF8"));
        assert_eq!(canonical_encoding("euc-jp"), Some("EUC_JP"));
        assert_eq!(canonical_encoding("Latin-1"), Some("LATIN1"));
        assert_eq!(canonical_encoding("ISO-8859-15"), Some("LATIN9"));
        assert_eq!(canonical_encoding("klingon"), None);
        let r = fast_reported(&server(), &p(&[("client_encoding", "utf-8")])).unwrap();
        assert_eq!(r.get("client_encoding"), Some("UTF8"));
        let r = fast_reported(&server(), &p(&[("client_encoding", "euc_jp")])).unwrap();
        assert_eq!(r.get("client_encoding"), Some("EUC_JP"));
    }

    #[test]
    fn what_only_a_server_can_answer_goes_to_one() {
        // An encoding, a date style or a time zone tidepool cannot vouch for.
        assert!(fast_reported(&server(), &p(&[("client_encoding", "klingon")])).is_none());
        assert!(fast_reported(&server(), &p(&[("DateStyle", "German")])).is_none());
        assert!(fast_reported(&server(), &p(&[("TimeZone", "Mars/Olympus")])).is_none());
        assert!(fast_reported(&server(), &p(&[("extra_float_digits", "x")])).is_none());
        assert!(fast_reported(&server(), &p(&[("search_path", "a")])).is_none());
        // What the server has already, or what any text may be.
        let r = fast_reported(
            &server(),
            &p(&[
                ("datestyle", "iso, mdy"),
                ("application_name", "worker 7"),
                ("extra_float_digits", "3"),
                ("fallback_application_name", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(r.get("DateStyle"), Some("ISO, MDY"));
        assert_eq!(r.get("application_name"), Some("worker 7"));
        assert_eq!(r.get("extra_float_digits"), None);
    }

    #[test]
    fn every_parameter_is_reported_once_in_name_order() {
        let r = fast_reported(
            &server(),
            &p(&[
                ("application_name", "worker 7"),
                ("client_encoding", "latin1"),
            ]),
        )
        .unwrap();
        let mut expected = values();
        expected.insert("application_name".into(), "worker 7".into());
        expected.insert("client_encoding".into(), "LATIN1".into());
        assert_eq!(sent(&r), expected.into_iter().collect::<Vec<_>>());
        // Nothing of the client's own: the server's values as encoded once,
        // the same messages as when they are written one by one.
        let plain = fast_reported(&server(), &p(&[("fallback_application_name", "x")])).unwrap();
        assert_eq!(sent(&plain), values().into_iter().collect::<Vec<_>>());
        let mut one_by_one = BytesMut::new();
        for (k, v) in values() {
            messages::parameter_status(&mut one_by_one, &k, &v);
        }
        assert_eq!(server().encoded(), &one_by_one[..]);
        // A setting the server does not report is added in its place.
        let own = Reported {
            server: server(),
            own: BTreeMap::from([
                ("A_first".to_string(), "0".to_string()),
                ("b_extra".to_string(), "1".to_string()),
                ("zz_last".to_string(), "2".to_string()),
            ]),
        };
        let names: Vec<String> = sent(&own).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "A_first",
                "DateStyle",
                "TimeZone",
                "application_name",
                "b_extra",
                "client_encoding",
                "zz_last"
            ]
        );
        // Each message whole, with the client's value where it has one.
        let values: Vec<String> = sent(&own).into_iter().map(|(_, v)| v).collect();
        assert_eq!(values, ["0", "ISO, MDY", "Etc/UTC", "", "1", "UTF8", "2"]);
    }
}
