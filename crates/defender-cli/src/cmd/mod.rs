//! One module per subcommand.

pub mod emulate;
pub mod schema;
pub mod tables;
pub mod validate;
