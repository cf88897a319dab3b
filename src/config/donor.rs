//! `[donor]`: what this machine shares with peers, and the flags for it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use nixswarm_node::installed::NamePattern;
use nixswarm_protocol::{CACHE_NIXOS_ORG_KEY, PublicKey};
use serde::{Deserialize, Serialize};

use crate::size::Size;

/// What a node shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Contribute {
    /// Share the signed paths installed in the Nix store, from its own
    /// files; keep nothing fetched.
    Installed,
    /// Share installed paths (unless `share-installed = false`) and also
    /// keep and share what this machine fetches, in `store.location`.
    Cache,
    /// Share nothing and keep nothing fetched.
    None,
}

/// `[donor]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DonorSection {
    /// installed, cache or none.
    pub contribute: Contribute,
    /// In cache mode, also share installed paths (installed mode always does).
    pub share_installed: bool,
    /// The directory under which `nix/store` and `nix/var/nix/db` live.
    pub nix_store_root: PathBuf,
    /// Store-path names never shared (`*` and `?` wildcards), e.g. "*-secrets".
    pub exclude: Vec<String>,
    /// Most bytes read per second while indexing installed paths; unset: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_rate: Option<Size>,
    /// How often the Nix database is checked for new and collected paths.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Keys whose signature lets a path leave the machine (`name:base64`).
    /// Trusting a key (`upstream.trusted-keys`) is not sharing what it signed.
    pub share_keys: Vec<String>,
    /// Also share unsigned content-addressed paths fetched through the
    /// gateway (what `nix-store --add` makes). Installed paths never are.
    pub share_content_addressed: bool,
}

impl Default for DonorSection {
    fn default() -> Self {
        Self {
            contribute: Contribute::Cache,
            share_installed: true,
            nix_store_root: PathBuf::from("/"),
            exclude: vec![],
            index_rate: Some(Size(50 << 20)),
            poll_interval: Duration::from_secs(10),
            share_keys: vec![CACHE_NIXOS_ORG_KEY.to_owned()],
            share_content_addressed: false,
        }
    }
}

/// The donor flags (each also read from a `NIXSWARM_*` variable).
#[derive(Debug, Clone, Default, Args)]
pub struct DonorArgs {
    /// What to share: installed (the signed paths in the Nix store), cache
    /// (also what this machine fetches) or none.
    #[arg(long, env = "NIXSWARM_CONTRIBUTE", value_name = "MODE")]
    pub contribute: Option<Contribute>,
    /// In cache mode, share installed paths too (true or false).
    #[arg(long, env = "NIXSWARM_SHARE_INSTALLED", value_name = "BOOL")]
    pub share_installed: Option<bool>,
    /// Directory holding nix/store and nix/var/nix/db (default /).
    #[arg(long, env = "NIXSWARM_NIX_STORE_ROOT", value_name = "DIR")]
    pub nix_store_root: Option<PathBuf>,
    /// Store-path name pattern never to share; repeatable. Replaces the configured list.
    #[arg(
        long = "exclude",
        env = "NIXSWARM_EXCLUDE",
        value_delimiter = ',',
        value_name = "PATTERN"
    )]
    pub exclude: Vec<String>,
    /// Most bytes read per second while indexing installed paths, e.g. 50M; 0: unlimited.
    #[arg(long, env = "NIXSWARM_INDEX_RATE", value_name = "RATE", value_parser = super::parse_rate)]
    pub index_rate: Option<Size>,
    /// How often to check the Nix database for changes, e.g. 10s.
    #[arg(long, env = "NIXSWARM_POLL_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Key NAME:BASE64 whose signed paths may be shared; repeat for several.
    /// Replaces the default (cache.nixos.org-1).
    #[arg(
        long = "share-key",
        env = "NIXSWARM_SHARE_KEY",
        value_delimiter = ',',
        value_name = "NAME:KEY"
    )]
    pub share_keys: Vec<String>,
    /// Share unsigned content-addressed paths too (true or false).
    #[arg(long, env = "NIXSWARM_SHARE_CONTENT_ADDRESSED", value_name = "BOOL")]
    pub share_content_addressed: Option<bool>,
}

impl DonorSection {
    pub(super) fn apply(&mut self, a: &DonorArgs) {
        if let Some(c) = a.contribute {
            self.contribute = c;
        }
        if let Some(s) = a.share_installed {
            self.share_installed = s;
        }
        if let Some(r) = &a.nix_store_root {
            self.nix_store_root = r.clone();
        }
        if !a.exclude.is_empty() {
            self.exclude = a.exclude.clone();
        }
        if let Some(r) = a.index_rate {
            self.index_rate = (r.0 > 0).then_some(r);
        }
        if let Some(p) = a.poll_interval {
            self.poll_interval = p;
        }
        if !a.share_keys.is_empty() {
            self.share_keys = a.share_keys.clone();
        }
        if let Some(c) = a.share_content_addressed {
            self.share_content_addressed = c;
        }
    }

    pub(super) fn check(&self) -> Result<()> {
        self.patterns()?;
        self.share_keys()?;
        if self.poll_interval.is_zero() {
            bail!("donor.poll-interval must be above 0");
        }
        Ok(())
    }

    /// The exclusion patterns, parsed.
    pub fn patterns(&self) -> Result<Vec<NamePattern>> {
        self.exclude
            .iter()
            .map(|p| p.parse().map_err(anyhow::Error::from))
            .collect()
    }

    /// The share keys, parsed.
    pub fn share_keys(&self) -> Result<Vec<PublicKey>> {
        self.share_keys
            .iter()
            .map(|k| super::public_key("share key", k))
            .collect()
    }

    /// True if installed paths are shared.
    pub fn shares_installed(&self) -> bool {
        match self.contribute {
            Contribute::Installed => true,
            Contribute::Cache => self.share_installed,
            Contribute::None => false,
        }
    }

    /// True if fetched paths are kept (and shared).
    pub fn keeps_fetched(&self) -> bool {
        self.contribute == Contribute::Cache
    }
}
