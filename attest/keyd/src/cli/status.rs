//! `warden-keyd status`: the key store, opened directly (keyd stopped).

use std::path::Path;

use anyhow::Context as _;
use warden_keystore::report::{print_lines, status_lines};

use crate::config::KeydConfig;

/// Prints the report; fails when something is wrong.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = KeydConfig::load(config_path)?;
    let store =
        crate::backend::open(&config.keystore).context("opening the key store (`keystore`)")?;
    let problems = print_lines(status_lines(store.as_ref()));
    if problems > 0 {
        anyhow::bail!("{problems} problem(s): see the hints above");
    }
    println!("ok");
    Ok(())
}
