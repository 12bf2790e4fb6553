//! The watchdog and what its leader does with the address: Pgpool-II's
//! members, heartbeats and escalation commands as `[watchdog]`,
//! `[[watchdog.peers]]` and `[escalation]`. The escalation scripts of
//! Pgpool-II's AWS documentation (an Elastic IP moved with `aws ec2
//! associate-address`, a route moved with `aws ec2 replace-route`) become
//! the built-in `eip` and `route_table` modes.

use super::{
    Input, Mapper, boolean, int, on, seconds,
    toml_out::{Table, str_value},
};

/// A move recognised in an escalation script.
#[derive(Debug, PartialEq, Eq)]
pub enum Recognised {
    /// `aws ec2 associate-address … --allocation-id ID`.
    EipAllocation(String),
    /// `aws ec2 associate-address … --public-ip IP`: tidepool needs the
    /// allocation id.
    EipPublicIp(String),
    /// `aws ec2 replace-route --route-table-id ID --destination-cidr-block CIDR`.
    Route { tables: Vec<String>, cidr: String },
}

/// Reads what an escalation script does, with shell variables assigned a
/// literal in the script replaced by their value.
pub fn recognise(script: &str) -> Option<Recognised> {
    let mut vars = std::collections::BTreeMap::new();
    for line in script.lines().map(str::trim) {
        if let Some((k, v)) = line.split_once('=')
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            let v = v
                .split('#')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(['"', '\'']);
            vars.insert(k.to_string(), v.to_string());
        }
    }
    let expand = |word: &str| -> String {
        let w = word.trim_matches(['"', '\'']);
        let name = w
            .trim_start_matches('$')
            .trim_start_matches('{')
            .trim_end_matches('}');
        if w.starts_with('$') {
            vars.get(name).cloned().unwrap_or_else(|| w.to_string())
        } else {
            w.to_string()
        }
    };
    let literal = |v: &str| !v.is_empty() && !v.contains('$');
    let mut route_tables = Vec::new();
    let mut cidr = None;
    for line in script
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        let arg = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .map(|w| expand(w))
        };
        let Some(at) = words
            .windows(3)
            .position(|w| w[0] == "aws" && w[1] == "ec2")
        else {
            continue;
        };
        match words.get(at + 2).copied() {
            Some("associate-address") => {
                if let Some(id) = arg("--allocation-id").filter(|v| literal(v)) {
                    return Some(Recognised::EipAllocation(id));
                }
                if let Some(ip) = arg("--public-ip").filter(|v| literal(v)) {
                    return Some(Recognised::EipPublicIp(ip));
                }
            }
            Some("replace-route") | Some("create-route") => {
                if let Some(t) = arg("--route-table-id").filter(|v| literal(v))
                    && !route_tables.contains(&t)
                {
                    route_tables.push(t);
                }
                if let Some(c) = arg("--destination-cidr-block").filter(|v| literal(v)) {
                    cidr = Some(c);
                }
            }
            _ => {}
        }
    }
    match (route_tables.is_empty(), cidr) {
        (false, Some(cidr)) => Some(Recognised::Route {
            tables: route_tables,
            cidr,
        }),
        _ => None,
    }
}

pub(super) fn watchdog(m: &mut Mapper, input: &Input) {
    let Some(use_wd) = m.take("use_watchdog") else {
        return;
    };
    if !on(&use_wd.value).unwrap_or(false) {
        return;
    }
    let mut ids: Vec<usize> = m
        .get
        .keys()
        .filter_map(|k| k.strip_prefix("hostname"))
        .filter_map(|n| n.parse().ok())
        .collect();
    ids.sort_unstable();
    let me = input.node_id;
    let value =
        |m: &mut Mapper, name: String| m.take(&name).map(|s| (s.value.clone(), s.line.clone()));
    let mut wd = Table::new("watchdog");
    let mut peers = Vec::new();
    let mut not_ip = Vec::new();
    let mut own_name = format!("tidepool{me}");
    for id in &ids {
        let (host, host_line) = value(m, format!("hostname{id}")).expect("listed");
        let (port, port_line) =
            value(m, format!("wd_port{id}")).unwrap_or(("9000".into(), String::new()));
        let (hb_host, hb_line) =
            value(m, format!("heartbeat_hostname{id}")).unwrap_or((host.clone(), String::new()));
        let (hb_port, hb_port_line) =
            value(m, format!("heartbeat_port{id}")).unwrap_or(("9694".into(), String::new()));
        let source = [host_line, port_line, hb_line, hb_port_line]
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if *id == me {
            own_name = host.clone();
            wd.set("node_name", str_value(&host), &source);
            wd.set("listen", str_value(&format!("0.0.0.0:{port}")), "");
            wd.set(
                "heartbeat_listen",
                str_value(&format!("0.0.0.0:{hb_port}")),
                "",
            );
            continue;
        }
        for h in [&host, &hb_host] {
            if h.parse::<std::net::IpAddr>().is_err() && !not_ip.contains(h) {
                not_ip.push(h.clone());
            }
        }
        let mut p = Table::new(&format!("watchdog peer {id}"));
        p.set("name", str_value(&host), &source);
        p.set("address", str_value(&format!("{host}:{port}")), "");
        p.set("heartbeat", str_value(&format!("{hb_host}:{hb_port}")), "");
        peers.push(p);
    }
    if ids.is_empty() {
        wd.set("node_name", str_value(&own_name), "");
    }
    match m.take("wd_authkey") {
        Some(k) if k.value.len() >= 16 => wd.set("shared_key", str_value(&k.value), &k.line),
        other => {
            let line = other.map(|k| k.line.clone()).unwrap_or_default();
            wd.set(
                "shared_key_file",
                str_value("/etc/tidepool/watchdog.key"),
                &line,
            );
            m.warnings.push(
                "wd_authkey: tidepool authenticates every watchdog message with a key of at least 16 characters: \
                 put the same one in /etc/tidepool/watchdog.key on every node"
                    .into(),
            );
        }
    }
    if let Some(s) = m.take("wd_priority") {
        match int(&s.value) {
            Ok(v) => wd.set("priority", v, &s.line),
            Err(why) => m.drop_setting(s, &why),
        }
    }
    for (name, key) in [
        ("wd_heartbeat_keepalive", "heartbeat_interval"),
        ("wd_heartbeat_deadtime", "election_timeout"),
    ] {
        if let Some(s) = m.take(name) {
            match seconds(&s.value) {
                Ok(v) => wd.set(key, v, &s.line),
                Err(why) => m.drop_setting(s, &why),
            }
        }
    }
    if let Some(s) = m.take("enable_consensus_with_half_votes") {
        match boolean(&s.value) {
            Ok(v) => wd.set("half_votes", v, &s.line),
            Err(why) => m.drop_setting(s, &why),
        }
    }
    let escalation = escalation(m, input);
    if not_ip.is_empty() {
        m.out.tables_put("watchdog", wd);
        for p in peers {
            m.out.push_array("watchdog.peers", p);
        }
        if let Some(e) = escalation {
            m.out.tables_put("escalation", e);
        }
    } else {
        m.warnings.push(format!(
            "hostname/heartbeat_hostname: tidepool's watchdog peers are IP addresses, and {} {} not: \
             the watchdog is written commented out; put in the addresses and uncomment it",
            not_ip.join(", "),
            if not_ip.len() == 1 { "is" } else { "are" }
        ));
        m.out.commented("watchdog", wd);
        for p in peers {
            m.out.commented("watchdog.peers", p);
        }
        if let Some(e) = escalation {
            m.out.commented("escalation", e);
        }
    }
}

/// `[escalation]` from delegate_IP, if_up_cmd and the escalation commands.
fn escalation(m: &mut Mapper, input: &Input) -> Option<Table> {
    let esc = m
        .take("wd_escalation_command")
        .filter(|s| !s.value.trim().is_empty());
    let de = m
        .take("wd_de_escalation_command")
        .filter(|s| !s.value.trim().is_empty());
    let vip = m.take("delegate_ip").filter(|s| !s.value.trim().is_empty());
    let up = m.take("if_up_cmd");
    let down = m.take("if_down_cmd");
    let arping = m.take("arping_cmd");
    for name in ["if_cmd_path", "arping_path"] {
        m.take(name);
    }
    let mut e = Table::new("escalation");
    if let Some(esc) = esc {
        let script = input.scripts.get(&esc.value);
        match script.and_then(|s| recognise(s)) {
            Some(Recognised::EipAllocation(id)) => {
                e.set("mode", str_value("eip"), &esc.line);
                e.set("eip_allocation_id", str_value(&id), "");
                return Some(e);
            }
            Some(Recognised::Route { tables, cidr }) => {
                e.set("mode", str_value("route_table"), &esc.line);
                let ids: Vec<String> = tables.iter().map(|t| str_value(t)).collect();
                e.set("route_table_ids", format!("[{}]", ids.join(", ")), "");
                e.set("vip_cidr", str_value(&cidr), "");
                return Some(e);
            }
            Some(Recognised::EipPublicIp(ip)) => {
                m.warnings.push(format!(
                    "wd_escalation_command: the script moves the Elastic IP {ip} by its address; tidepool moves it by \
                     allocation id (an address can be released and handed to someone else): \
                     `aws ec2 describe-addresses --public-ips {ip} --query 'Addresses[0].AllocationId'` gives it; \
                     set [escalation] eip_allocation_id and uncomment the section"
                ));
                e.set("mode", str_value("eip"), &esc.line);
                e.set(
                    "eip_allocation_id",
                    str_value(&format!("ALLOCATION ID OF {ip}")),
                    "",
                );
                m.out.commented("escalation", e);
                return None;
            }
            None => {
                if script.is_none() {
                    m.warnings.push(format!(
                        "wd_escalation_command: {} could not be read, so it is run as a command; \
                         tidepool runs it again every verify_interval while active: it must do nothing the second time",
                        esc.value
                    ));
                }
                e.set("mode", str_value("command"), &esc.line);
                e.set("escalate_command", str_value(&esc.value), "");
                if let Some(de) = de {
                    e.set("de_escalate_command", str_value(&de.value), &de.line);
                }
                return Some(e);
            }
        }
    }
    let vip = vip?;
    let ip = vip.value.trim().to_string();
    let sub = |cmd: &str| cmd.replace("$_IP_$", &ip);
    let (Some(up), Some(down)) = (up, down) else {
        m.warnings.push(format!(
            "delegate_IP: {ip} without if_up_cmd and if_down_cmd: the address is not moved"
        ));
        return None;
    };
    // Run again every verify_interval while active: `ip addr add` of an
    // address already there fails, `replace` does not.
    let up_cmd = sub(&up.value).replace(" addr add ", " addr replace ");
    let up_cmd = match arping {
        Some(a) if !a.value.trim().is_empty() => format!("{up_cmd} && {}", sub(&a.value)),
        _ => up_cmd,
    };
    e.set(
        "mode",
        str_value("command"),
        &format!("{}\n{}", vip.line, up.line),
    );
    e.set("escalate_command", str_value(&up_cmd), "");
    e.set(
        "de_escalate_command",
        str_value(&sub(&down.value)),
        &down.line,
    );
    m.warnings.push(format!(
        "delegate_IP: {ip} is moved by the if_up_cmd/if_down_cmd commands (with $_IP_$ filled in, `ip addr add` \
         made `ip addr replace`: tidepool runs it again every verify_interval while active)"
    ));
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpool_aws_documentation_scripts_are_recognised() {
        let eip = "#!/bin/sh\nELASTIC_IP=35.163.178.3\nINSTANCE_ID=i-0a9b\n\
                   aws ec2 associate-address --instance-id $INSTANCE_ID --public-ip $ELASTIC_IP\n";
        assert_eq!(
            recognise(eip),
            Some(Recognised::EipPublicIp("35.163.178.3".into()))
        );
        let alloc = "ALLOC=eipalloc-0abc\naws ec2 associate-address --allocation-id \"$ALLOC\" \
                     --instance-id $(curl -s http://169.254.169.254/latest/meta-data/instance-id)\n";
        assert_eq!(
            recognise(alloc),
            Some(Recognised::EipAllocation("eipalloc-0abc".into()))
        );
        let route = "VIP=10.0.0.100/32\nfor rt in rtb-1 rtb-2; do :; done\n\
                     aws ec2 replace-route --route-table-id rtb-1 --destination-cidr-block $VIP --instance-id $ID\n\
                     aws ec2 replace-route --route-table-id rtb-2 --destination-cidr-block $VIP --instance-id $ID\n";
        assert_eq!(
            recognise(route),
            Some(Recognised::Route {
                tables: vec!["rtb-1".into(), "rtb-2".into()],
                cidr: "10.0.0.100/32".into()
            })
        );
        // An id that is not literal cannot be carried.
        assert_eq!(
            recognise("aws ec2 associate-address --allocation-id $(lookup)\n"),
            None
        );
        assert_eq!(recognise("ip addr add 10.0.0.1/24 dev eth0\n"), None);
    }
}
