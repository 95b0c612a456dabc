//! [`TableRow`]: what every generated table model offers.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{Table, TypeDrift};

/// A typed row of one advanced-hunting table. Implemented by every struct in [`crate::tables`].
pub trait TableRow: Serialize + DeserializeOwned + Default + Clone + std::fmt::Debug {
    /// The table.
    const TABLE: Table;

    /// Columns whose value was not in the documented type (kept as they arrived).
    fn type_drift(&self) -> Vec<TypeDrift>;

    /// Columns the schema does not know, kept as they arrived ("schema drift").
    fn unknown_columns(&self) -> &Map<String, Value>;
}
