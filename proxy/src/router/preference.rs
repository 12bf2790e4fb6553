//! Redirect preference lists, Pgpool-II style:
//! `"regex:target(ratio),…"` where target is a node id, `primary` or
//! `standby`, and ratio (default 1) is the share of reads sent there.

use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Primary,
    Standby,
    Node(usize),
}

#[derive(Debug, Clone)]
pub struct Preference {
    pattern: Regex,
    target: Target,
    ratio: f64,
}

/// Parses a whole list; an empty string is an empty list.
pub fn parse_list(text: &str) -> Result<Vec<Preference>, String> {
    let mut out = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (pattern, rest) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("{entry:?}: expected \"regex:node\""))?;
        let (target, ratio) = match rest.split_once('(') {
            Some((t, r)) => {
                let r = r
                    .strip_suffix(')')
                    .ok_or_else(|| format!("{entry:?}: missing ')'"))?;
                let ratio: f64 = r
                    .trim()
                    .parse()
                    .map_err(|_| format!("{entry:?}: ratio {r:?} is not a number"))?;
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(format!("{entry:?}: ratio must be between 0 and 1"));
                }
                (t.trim(), ratio)
            }
            None => (rest.trim(), 1.0),
        };
        let target =
            match target {
                "primary" => Target::Primary,
                "standby" => Target::Standby,
                id => Target::Node(id.parse().map_err(|_| {
                    format!("{entry:?}: target must be a node id, primary or standby")
                })?),
            };
        let pattern = Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("{entry:?}: bad regex: {e}"))?;
        out.push(Preference {
            pattern,
            target,
            ratio,
        });
    }
    Ok(out)
}

/// The first preference matching `name`.
pub fn find(list: &[Preference], name: &str) -> Option<(Target, f64)> {
    if name.is_empty() {
        return None;
    }
    list.iter()
        .find(|p| p.pattern.is_match(name))
        .map(|p| (p.target, p.ratio))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_match_whole_names() {
        let l = parse_list("postgres:primary, app[0-9]:1(0.5), report.*:standby").unwrap();
        assert_eq!(find(&l, "postgres"), Some((Target::Primary, 1.0)));
        assert_eq!(find(&l, "app3"), Some((Target::Node(1), 0.5)));
        assert_eq!(find(&l, "app33"), None);
        assert_eq!(find(&l, "reporting"), Some((Target::Standby, 1.0)));
        assert!(parse_list("x:nowhere").is_err());
        assert!(parse_list("x:1(2)").is_err());
        assert!(parse_list("").unwrap().is_empty());
    }
}
