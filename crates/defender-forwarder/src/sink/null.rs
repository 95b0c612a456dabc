//! `kind = "null"`: takes every record, keeps none, and acknowledges at once. The smallest sink
//! there is: a template for new kinds, and a way to measure a source alone.
//!
//! ```toml
//! [[sinks]]
//! kind = "null"
//! ```

use std::any::Any;

use async_trait::async_trait;
use serde::Deserialize;
use serde_with::serde_as;
use tokio::sync::mpsc;

use super::{Sink, SinkConfig, SinkContext};
use crate::config::Text;
use crate::delivery::Delivery;
use crate::table_filter::TablesConfig;

/// `kind = "null"`.
#[serde_as]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullConfig {
    /// Name in logs and metrics (default `null`).
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    pub name: Option<String>,
    /// Tables it takes (default: all).
    #[serde(default)]
    pub tables: TablesConfig,
}

#[async_trait]
impl SinkConfig for NullConfig {
    fn kind(&self) -> &'static str {
        "null"
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("null")
    }

    fn tables(&self) -> &TablesConfig {
        &self.tables
    }

    async fn build(&self, cx: &SinkContext) -> Result<Box<dyn Sink>, String> {
        Ok(Box::new(NullSink { cx: cx.clone() }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct NullSink {
    cx: SinkContext,
}

#[async_trait]
impl Sink for NullSink {
    async fn run(self: Box<Self>, mut deliveries: mpsc::Receiver<Delivery>) {
        while let Some(d) = deliveries.recv().await {
            self.cx.count_out(d.records.iter().map(|r| (&r.table, r.raw.len())));
            self.cx.delivered_after(d.read_at, d.records.len() as u64);
            d.ack.ack();
        }
    }
}
