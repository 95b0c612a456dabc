//! Column descriptions: the KQL types Microsoft documents and the per-column metadata the
//! generated tables expose through [`crate::Table::columns`].

use std::fmt;

/// An advanced-hunting (Kusto) column type, as the table reference documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KqlType {
    /// `string`
    String,
    /// `long` (64-bit integer)
    Long,
    /// `int` (32-bit integer)
    Int,
    /// `bool` (the docs also write `boolean`)
    Bool,
    /// `real` (64-bit float)
    Real,
    /// `datetime`
    Datetime,
    /// `guid`
    Guid,
    /// `dynamic` (any JSON; the docs also write `object`)
    Dynamic,
}

impl KqlType {
    /// Every type.
    pub const ALL: &'static [KqlType] = &[
        KqlType::String,
        KqlType::Long,
        KqlType::Int,
        KqlType::Bool,
        KqlType::Real,
        KqlType::Datetime,
        KqlType::Guid,
        KqlType::Dynamic,
    ];

    /// The type's KQL name.
    pub const fn name(self) -> &'static str {
        match self {
            KqlType::String => "string",
            KqlType::Long => "long",
            KqlType::Int => "int",
            KqlType::Bool => "bool",
            KqlType::Real => "real",
            KqlType::Datetime => "datetime",
            KqlType::Guid => "guid",
            KqlType::Dynamic => "dynamic",
        }
    }

    /// Reads a type name as the docs write it, synonyms included (`boolean`, `object`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "string" => KqlType::String,
            "long" => KqlType::Long,
            "int" => KqlType::Int,
            "bool" | "boolean" => KqlType::Bool,
            "real" | "double" => KqlType::Real,
            "datetime" => KqlType::Datetime,
            "guid" => KqlType::Guid,
            "dynamic" | "object" => KqlType::Dynamic,
            _ => return None,
        })
    }
}

impl serde::Serialize for KqlType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl fmt::Display for KqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One column of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Column {
    /// The exact column name (`InitiatingProcessSHA256`).
    pub name: &'static str,
    /// The Rust field that holds it (`initiating_process_sha256`).
    pub field: &'static str,
    /// The documented type.
    pub kql_type: KqlType,
    /// A `string` column whose content is JSON (decoded as [`crate::Dynamic`]).
    pub json_content: bool,
    /// Seen in real stream data but not in Microsoft's table reference.
    pub observed_only: bool,
    /// One line on what it holds.
    pub description: &'static str,
}
