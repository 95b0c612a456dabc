//! Arrow schemas of the tables (feature `arrow`), generated from `schemas/` beside the models.
//!
//! A known table's schema is its columns in the reference's order (`x-observed` ones included,
//! all nullable), then the extra columns, whose names start with `_` as no Defender column's
//! does: [`TIME`], [`TENANT_ID`], [`OPERATION_NAME`], [`CATEGORY`], [`ENVELOPE`], [`UNKNOWN`],
//! [`DRIFT`], [`ABSENT`]. A table the crate does not know gets [`unknown_table_schema`]: the extra columns
//! and [`PROPERTIES`].
//!
//! Types: `datetime` -> `Timestamp(Nanosecond, "UTC")`, `long` -> `Int64`, `int` -> `Int32`,
//! `bool` -> `Boolean`, `real` -> `Float64`, `string` and `guid` -> `Utf8`, `dynamic` -> `Utf8`
//! holding the JSON text as it arrived.
//!
//! ```
//! use defender_schema::{Table, arrow};
//!
//! let schema = arrow::schema(Table::DeviceProcessEvents);
//! assert_eq!(schema.field(0).name(), "Timestamp");
//! assert!(schema.field_with_name(arrow::DRIFT).is_ok());
//! ```

use std::sync::{Arc, OnceLock};

pub use arrow_schema;
use arrow_schema::SchemaRef;

use crate::Table;
pub use crate::generated::arrow::{
    ABSENT, CATEGORY, DRIFT, ENVELOPE, OPERATION_NAME, PROPERTIES, TENANT_ID, TIME, UNKNOWN, extra_fields, timestamp,
};

/// The extra columns' names, in schema order (an unknown table adds [`PROPERTIES`] after them).
pub const EXTRA_COLUMNS: [&str; 8] = [
    TIME,
    TENANT_ID,
    OPERATION_NAME,
    CATEGORY,
    ENVELOPE,
    UNKNOWN,
    DRIFT,
    ABSENT,
];

/// The Arrow schema of a known table (built once, then shared).
pub fn schema(table: Table) -> SchemaRef {
    static SCHEMAS: OnceLock<Vec<SchemaRef>> = OnceLock::new();
    let all = SCHEMAS.get_or_init(|| {
        Table::ALL
            .iter()
            .map(|&t| Arc::new(crate::generated::arrow::table_schema(t)))
            .collect()
    });
    let index = Table::ALL
        .iter()
        .position(|&t| t == table)
        .expect("Table::ALL lists every table");
    Arc::clone(&all[index])
}

/// The schema of a table the crate does not know: the extra columns, then [`PROPERTIES`].
pub fn unknown_table_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| Arc::new(crate::generated::arrow::unknown_table_schema())))
}

/// The schema of a table by name: a known table's, else [`unknown_table_schema`].
pub fn schema_for_name(name: &str) -> SchemaRef {
    Table::from_name(name).map_or_else(unknown_table_schema, schema)
}

#[cfg(test)]
mod tests {
    use arrow_schema::{DataType, TimeUnit};

    use super::*;
    use crate::KqlType;

    #[test]
    fn every_table_follows_the_contract() {
        for &table in Table::ALL {
            let s: &arrow_schema::Schema = &schema(table);
            let columns = table.columns();
            assert_eq!(s.fields().len(), columns.len() + EXTRA_COLUMNS.len(), "{table}");
            for (field, column) in s.fields().iter().zip(columns) {
                assert_eq!(field.name(), column.name);
                assert!(field.is_nullable());
                let want = match column.kql_type {
                    KqlType::Datetime => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                    KqlType::Long => DataType::Int64,
                    KqlType::Int => DataType::Int32,
                    KqlType::Bool => DataType::Boolean,
                    KqlType::Real => DataType::Float64,
                    _ => DataType::Utf8,
                };
                assert_eq!(field.data_type(), &want, "{table}.{}", column.name);
            }
            let extras: Vec<&str> = s.fields()[columns.len()..].iter().map(|f| f.name().as_str()).collect();
            assert_eq!(extras, EXTRA_COLUMNS);
            assert_eq!(s.field_with_name(TIME).unwrap().data_type(), &timestamp());
        }
    }

    #[test]
    fn unknown_tables_keep_properties() {
        let s = unknown_table_schema();
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names[..8], EXTRA_COLUMNS);
        assert_eq!(names[8], PROPERTIES);
        assert!(
            Table::ALL
                .iter()
                .all(|t| t.columns().iter().all(|c| !c.name.starts_with('_')))
        );
    }
}
