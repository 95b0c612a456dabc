//! One module per subcommand.

pub mod backfill;
pub mod dead_letter;
pub mod demo;
pub mod emulate;
pub mod schema;
pub mod send;
pub mod tables;
pub mod tail;
pub mod validate;

/// A secret from the command line or the environment, kept in a type that never prints it.
#[allow(clippy::unnecessary_wraps)]
pub fn parse_secret(s: &str) -> Result<defender_eventhub::Secret, std::convert::Infallible> {
    Ok(defender_eventhub::Secret::new(s))
}
