//! One module per subcommand.

pub mod check_config;
pub mod import;
pub mod run;
pub mod status;
