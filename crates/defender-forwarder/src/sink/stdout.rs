//! NDJSON on standard output: one record per line, exactly as it arrived.

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::{SinkContext, count_out};
use crate::delivery::Delivery;

/// Writes every delivery's records as lines, flushing before acknowledging.
pub async fn run(ctx: SinkContext, mut rx: mpsc::Receiver<Delivery>) {
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
        let mut result = Ok(());
        for d in &batch {
            for r in &d.records {
                if result.is_ok() {
                    result = out.write_all(&super::one_line(&r.raw)).await;
                }
                if result.is_ok() {
                    result = out.write_all(b"\n").await;
                }
            }
        }
        if result.is_ok() {
            result = out.flush().await;
        }
        if let Err(e) = result {
            // The reader of our output is gone: nothing more can be delivered here. The
            // deliveries are dropped unacknowledged, so no checkpoint passes them.
            tracing::error!(sink = %ctx.name, error = %e, "standard output closed; stopping this sink");
            return;
        }
        count_out(
            &ctx,
            batch
                .iter()
                .flat_map(|d| d.records.iter().map(|r| (&r.table, r.raw.len()))),
        );
        for d in batch {
            let n = d.records.len() as u64;
            ctx.metrics.observe(
                "defender_delivery_seconds",
                &[("sink", &ctx.name)],
                d.read_at.elapsed().as_secs_f64(),
                n,
            );
            d.ack.ack();
        }
    }
}
