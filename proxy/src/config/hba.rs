//! `[[hba]]` as written in the file; `auth::Hba` compiles it.

use serde::{Deserialize, Serialize};

/// One `[[hba]]` table as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HbaRuleConfig {
    #[serde(rename = "type")]
    pub conn_type: String,
    pub database: OneOrMany,
    pub user: OneOrMany,
    pub address: OneOrMany,
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clientcert: Option<String>,
}

/// A single string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> &[String] {
        match self {
            OneOrMany::One(item) => std::slice::from_ref(item),
            OneOrMany::Many(items) => items,
        }
    }
}
