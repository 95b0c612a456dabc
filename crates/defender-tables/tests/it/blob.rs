//! Azurite.
