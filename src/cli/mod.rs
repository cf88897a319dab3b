//! One module per subcommand.

pub mod check_config;
pub mod counters;
pub mod export;
pub mod import;
pub mod pin;
pub mod progress;
pub mod run;
pub mod status;
