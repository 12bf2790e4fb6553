//! Pgpool-II values read as tidepool's: booleans, integers, seconds,
//! listen addresses, anchored lists, pool_hba.conf lines.

use super::toml_out::str_value;

/// `*` and host names as one listening address; whether others were given.
pub(super) fn listen_address(v: &str) -> (String, bool) {
    let mut parts = v.split(',').map(str::trim).filter(|p| !p.is_empty());
    let first = parts.next().unwrap_or("*");
    let addr = match first {
        "*" => "0.0.0.0".to_string(),
        "localhost" => "127.0.0.1".to_string(),
        a if a.contains(':') => format!("[{a}]"),
        a => a.to_string(),
    };
    (addr, parts.next().is_some())
}

pub(super) fn on(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

pub(super) fn boolean(v: &str) -> Result<String, String> {
    on(v)
        .map(|b| b.to_string())
        .ok_or_else(|| format!("not a boolean: {v:?}"))
}

pub(super) fn int(v: &str) -> Result<String, String> {
    v.parse::<u64>()
        .map(|n| n.to_string())
        .map_err(|_| format!("not a number: {v:?}"))
}

/// A Pgpool-II time in seconds (or with a unit) as a duration.
pub(super) fn seconds(v: &str) -> Result<String, String> {
    let v = v.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Ok(str_value(&format!("{n}s")));
    }
    humantime::parse_duration(v)
        .map(|_| str_value(v))
        .map_err(|_| format!("not a time: {v:?}"))
}

pub(super) fn positive_seconds(v: &str) -> Result<String, String> {
    match v.trim().parse::<u64>() {
        Ok(0) => Err(
            "0 (off or no limit in Pgpool-II) is not allowed: tidepool keeps its default".into(),
        ),
        _ => seconds(v),
    }
}

/// A Pgpool-II list of names or regexes, which it matches whole, as a
/// TOML array of patterns anchored the same way.
pub(super) fn anchored_list(v: &str, sep: char) -> String {
    let items: Vec<String> = v
        .split(sep)
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(|i| str_value(&format!("^(?:{i})$")))
        .collect();
    format!("[{}]", items.join(", "))
}

/// One pool_hba.conf rule as `[[hba]]` keys.
pub(super) fn hba_rule(f: &[String]) -> Result<Vec<(&'static str, String)>, String> {
    let list = |v: &str| -> String {
        let items: Vec<&str> = v.split(',').collect();
        if items.len() == 1 {
            str_value(items[0])
        } else {
            format!(
                "[{}]",
                items
                    .iter()
                    .map(|i| str_value(i))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    let kind = f.first().map(String::as_str).unwrap_or("");
    if kind == "local" {
        return Err("tidepool has no Unix socket".into());
    }
    if !matches!(kind, "host" | "hostssl" | "hostnossl") || f.len() < 5 {
        return Err("not a rule tidepool reads".into());
    }
    let (database, user) = (&f[1], &f[2]);
    if database.starts_with('@') || user.starts_with('@') || user.starts_with('+') {
        return Err("file references and group membership have no equivalent".into());
    }
    // An address with a separate netmask: `10.0.0.0 255.0.0.0`.
    let (address, rest) = if f.len() >= 6
        && f[4].parse::<std::net::Ipv4Addr>().is_ok()
        && f[3].parse::<std::net::Ipv4Addr>().is_ok()
    {
        let mask: std::net::Ipv4Addr = f[4].parse().expect("checked");
        (
            format!("{}/{}", f[3], u32::from(mask).count_ones()),
            &f[5..],
        )
    } else {
        (f[3].clone(), &f[4..])
    };
    if address == "samehost" || address == "samenet" || address.starts_with('.') {
        return Err(format!("address {address:?} has no equivalent"));
    }
    let method = rest[0].as_str();
    if !matches!(
        method,
        "trust" | "reject" | "md5" | "scram-sha-256" | "password" | "cert"
    ) {
        return Err(format!("method {method:?} has no equivalent"));
    }
    let mut out = vec![
        ("type", str_value(kind)),
        ("database", list(database)),
        ("user", list(user)),
        ("address", str_value(&address)),
        ("method", str_value(method)),
    ];
    for opt in &rest[1..] {
        if let Some(v) = opt.strip_prefix("clientcert=") {
            out.push(("clientcert", str_value(v)));
        }
    }
    Ok(out)
}
