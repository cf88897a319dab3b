//! `nixswarm check-config`: load and validate the effective configuration,
//! then print it as TOML.

use anyhow::{Context as _, Result};

use crate::config::{Config, ConfigArgs};

pub fn run(args: &ConfigArgs) -> Result<()> {
    let effective = Config::load(args)?.resolve()?;
    let mut shown = effective.config.clone();
    shown.data_dir = Some(effective.data_dir.clone());
    let text = toml::to_string_pretty(&shown).context("printing the configuration")?;
    print!("{text}");
    eprintln!("configuration OK");
    Ok(())
}
