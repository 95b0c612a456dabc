//! One module per subcommand.

pub mod dead_letter;
pub mod demo;
pub mod emulate;
pub mod schema;
pub mod send;
pub mod tables;
pub mod tail;
pub mod validate;
