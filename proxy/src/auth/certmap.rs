//! Which client certificates may log in as which user under the `cert`
//! method and `clientcert = "verify-full"`: the certificate's common name
//! must be the user, or map to it through `[[cert_map]]` (like PostgreSQL's
//! pg_ident.conf: a `cn` starting with `/` is a regular expression, and
//! `\1` in `user` stands for its first capture group).

use regex::Regex;

use crate::config::CertMapConfig;

enum Pattern {
    Exact(String),
    Regex(Regex),
}

struct Entry {
    cn: Pattern,
    user: String,
}

/// The compiled `[[cert_map]]`.
#[derive(Default)]
pub struct CertMap {
    entries: Vec<Entry>,
}

impl CertMap {
    /// Compiles the entries; invalid regular expressions are reported by
    /// config validation and skipped here.
    pub fn new(config: &[CertMapConfig]) -> CertMap {
        let entries = config
            .iter()
            .filter_map(|m| {
                let cn = match m.cn.strip_prefix('/') {
                    Some(re) => Pattern::Regex(Regex::new(re).ok()?),
                    None => Pattern::Exact(m.cn.clone()),
                };
                Some(Entry {
                    cn,
                    user: m.user.clone(),
                })
            })
            .collect();
        CertMap { entries }
    }

    /// Whether a certificate with common name `cn` may log in as `user`.
    pub fn allows(&self, cn: &str, user: &str) -> bool {
        cn == user
            || self.entries.iter().any(|e| match &e.cn {
                Pattern::Exact(exact) => exact == cn && e.user == user,
                Pattern::Regex(re) => re.captures(cn).is_some_and(|c| {
                    let first = c.get(1).map_or("", |m| m.as_str());
                    e.user.replace("\\1", first) == user
                }),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> CertMap {
        CertMap::new(
            &entries
                .iter()
                .map(|(cn, user)| CertMapConfig {
                    cn: cn.to_string(),
                    user: user.to_string(),
                })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn the_common_name_is_the_user_without_a_map() {
        let m = map(&[]);
        assert!(m.allows("app", "app"));
        assert!(!m.allows("app", "admin"));
    }

    #[test]
    fn exact_entries_map_one_name() {
        let m = map(&[("alice@corp.example", "alice")]);
        assert!(m.allows("alice@corp.example", "alice"));
        assert!(!m.allows("alice@corp.example", "bob"));
        assert!(!m.allows("bob@corp.example", "alice"));
    }

    #[test]
    fn regex_entries_substitute_the_first_group() {
        let m = map(&[("/^(.*)@corp\\.example$", "\\1"), ("/^ops-.*$", "ops")]);
        assert!(m.allows("carol@corp.example", "carol"));
        assert!(!m.allows("carol@corp.example", "dave"));
        assert!(!m.allows("carol@evil.example", "carol"));
        assert!(m.allows("ops-7", "ops"));
        assert!(!m.allows("xops-7", "ops"));
    }
}
