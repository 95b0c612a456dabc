//! One module per subcommand.

pub mod schema;
pub mod tables;
pub mod validate;
