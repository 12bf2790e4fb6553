//! The configuration in force, for services that run across reloads: each
//! reads it again when it decides, and sees the file as it is now. The
//! value behind it is whatever the process compiles a configuration into
//! (`app::Runtime`); a service sees only the [`Config`] part.

use std::{ops::Deref, sync::Arc};

use arc_swap::ArcSwap;

use super::Config;

/// Where a service reads the configuration in force.
pub trait Source: Send + Sync {
    /// The configuration now; a reload after this call does not change it.
    fn current(&self) -> Current;
}

/// One configuration, held for as long as a decision needs it.
#[derive(Clone)]
pub struct Current(Arc<dyn AsRef<Config> + Send + Sync>);

impl Deref for Current {
    type Target = Config;
    fn deref(&self) -> &Config {
        (*self.0).as_ref()
    }
}

impl<T: AsRef<Config> + Send + Sync + 'static> Source for ArcSwap<T> {
    fn current(&self) -> Current {
        Current(self.load_full())
    }
}
