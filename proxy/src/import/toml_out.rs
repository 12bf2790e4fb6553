//! The TOML the import writes: tables in the order of
//! docs/configuration.md, each key below the Pgpool-II lines it came from.

/// Tables written once, in this order; arrays of tables follow the table
/// they belong beside.
const ORDER: &[&str] = &[
    "server",
    "pool",
    "health_check",
    "failover",
    "load_balancing",
    "logging",
    "tls",
    "backends",
    "users",
    "hba",
    "watchdog",
    "watchdog.peers",
    "escalation",
];

/// One TOML table: keys with their source lines, and free comments.
#[derive(Debug, Default)]
pub struct Table {
    what: String,
    lines: Vec<String>,
}

impl Table {
    pub fn new(what: &str) -> Table {
        Table {
            what: what.to_string(),
            lines: Vec::new(),
        }
    }

    /// `key = value` (a TOML value), below `source` as a comment when given.
    pub fn set(&mut self, key: &str, value: String, source: &str) {
        for l in source.lines().filter(|l| !l.is_empty()) {
            self.lines.push(format!("# {l}"));
        }
        self.lines.push(format!("{key} = {value}"));
    }

    pub fn comment(&mut self, text: &str) {
        self.lines.push(format!("# {text}"));
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// The whole output.
#[derive(Debug, Default)]
pub struct Out {
    tables: std::collections::BTreeMap<String, Table>,
    arrays: std::collections::BTreeMap<String, Vec<Table>>,
    /// Tables written as comments: what the user must complete first.
    commented: std::collections::BTreeMap<String, Vec<Table>>,
}

/// Names written as arrays of tables.
const ARRAYS: &[&str] = &["backends", "users", "hba", "watchdog.peers"];

impl Out {
    pub fn table(&mut self, name: &str) -> &mut Table {
        self.tables
            .entry(name.to_string())
            .or_insert_with(|| Table::new(name))
    }

    pub fn push_array(&mut self, name: &str, t: Table) {
        self.arrays.entry(name.to_string()).or_default().push(t);
    }

    pub fn array_len(&self, name: &str) -> usize {
        self.arrays.get(name).map_or(0, Vec::len)
    }

    /// Puts a whole table in place of `name`.
    pub fn tables_put(&mut self, name: &str, t: Table) {
        self.tables.insert(name.to_string(), t);
    }

    /// Writes `t` as comments in the place of `name`.
    pub fn commented(&mut self, name: &str, t: Table) {
        self.commented.entry(name.to_string()).or_default().push(t);
    }

    pub fn render(&self) -> String {
        let mut s = String::from(
            "# tidepool configuration converted from Pgpool-II by `tidepool import-pgpool`.\n\
             # Each key follows the Pgpool-II setting it came from, as a comment;\n\
             # see docs/configuration.md for every key and its default.\n",
        );
        for name in ORDER {
            if let Some(t) = self.tables.get(*name).filter(|t| !t.is_empty()) {
                s.push_str(&format!("\n[{name}]\n"));
                for l in &t.lines {
                    s.push_str(l);
                    s.push('\n');
                }
            }
            for t in self.arrays.get(*name).into_iter().flatten() {
                s.push_str(&format!("\n# {}\n[[{name}]]\n", t.what));
                for l in &t.lines {
                    s.push_str(l);
                    s.push('\n');
                }
            }
            for t in self.commented.get(*name).into_iter().flatten() {
                let header = if ARRAYS.contains(name) {
                    format!("[[{name}]]")
                } else {
                    format!("[{name}]")
                };
                s.push_str(&format!("\n# (to complete, then uncomment)\n# {header}\n"));
                for l in &t.lines {
                    s.push_str("# ");
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }
}

/// A TOML string literal.
pub fn str_value(v: &str) -> String {
    toml::Value::String(v.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_in_order_with_their_sources() {
        let mut out = Out::default();
        out.table("pool")
            .set("max_size", "32".into(), "num_init_children = 32");
        out.table("server")
            .set("listen", str_value("0.0.0.0:9999"), "port = 9999");
        let mut b = Table::new("backend 0");
        b.set("name", str_value("a\"b"), "");
        out.push_array("backends", b);
        let text = out.render();
        let server = text.find("[server]").unwrap();
        let pool = text.find("[pool]").unwrap();
        let backends = text.find("[[backends]]").unwrap();
        assert!(server < pool && pool < backends, "{text}");
        assert!(
            text.contains("# port = 9999\nlisten = \"0.0.0.0:9999\"\n"),
            "{text}"
        );
        let parsed: toml::Table = text.parse().unwrap();
        assert_eq!(parsed["backends"][0]["name"].as_str(), Some("a\"b"));
    }
}
