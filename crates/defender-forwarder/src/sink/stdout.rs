//! `kind = "stdout"`: NDJSON on standard output, one record per line, exactly as it arrived.
//!
//! ```toml
//! [[sinks]]
//! kind = "stdout"
//! tables = { include = ["AlertInfo"] }
//! ```

use std::any::Any;

use async_trait::async_trait;
use serde::Deserialize;
use serde_with::serde_as;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::{Sink, SinkConfig, SinkContext};
use crate::config::Text;
use crate::delivery::Delivery;
use crate::table_filter::TablesConfig;

/// `kind = "stdout"`.
#[serde_as]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Name in logs and metrics (default `stdout`).
    #[serde(default)]
    #[serde_as(as = "Option<Text>")]
    pub name: Option<String>,
    /// Tables to print (default: all).
    #[serde(default)]
    pub tables: TablesConfig,
}

#[async_trait]
impl SinkConfig for StdoutConfig {
    fn kind(&self) -> &'static str {
        "stdout"
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("stdout")
    }

    fn tables(&self) -> &TablesConfig {
        &self.tables
    }

    async fn build(&self, cx: &SinkContext) -> Result<Box<dyn Sink>, String> {
        Ok(Box::new(StdoutSink { cx: cx.clone() }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct StdoutSink {
    cx: SinkContext,
}

#[async_trait]
impl Sink for StdoutSink {
    /// Writes every delivery's records as lines, flushing before acknowledging.
    async fn run(self: Box<Self>, mut rx: mpsc::Receiver<Delivery>) {
        let cx = self.cx;
        let mut out = BufWriter::with_capacity(256 * 1024, tokio::io::stdout());
        while let Some(first) = rx.recv().await {
            // Take what is queued too: one flush per burst.
            let mut batch = vec![first];
            while batch.len() < 64 {
                match rx.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            if let Err(e) = write(&mut out, &batch).await {
                // The reader of our output is gone: nothing more can be delivered here. The
                // deliveries are dropped unacknowledged, so no checkpoint passes them.
                tracing::error!(sink = %cx.name, error = %e, "standard output closed; stopping this sink");
                return;
            }
            cx.count_out(
                batch
                    .iter()
                    .flat_map(|d| d.records.iter().map(|r| (&r.table, r.raw.len()))),
            );
            for d in batch {
                cx.delivered_after(d.read_at, d.records.len() as u64);
                d.ack.ack();
            }
        }
    }
}

async fn write(out: &mut BufWriter<tokio::io::Stdout>, batch: &[Delivery]) -> std::io::Result<()> {
    for d in batch {
        for r in &d.records {
            out.write_all(&super::one_line(&r.raw)).await?;
            out.write_all(b"\n").await?;
        }
    }
    out.flush().await
}
