//! `dualbus bench SCENARIO`: throughput, fan-out, latency, isolation and stalled-consumer
//! memory of the bus, measured through the public `DualBus` API (publish -> transport ->
//! handler), on the embedded or the Redis transport.
//!
//! Every scenario checks each message by its sequence number at the handler (lost, duplicated)
//! and records publish-to-handler latency (`ts` field to handler entry, same wall clock) in an
//! HDR histogram.

mod args;
mod delivery;
mod floor;
mod hub;
mod isolation;
mod load;
mod report;
mod rig;
mod stall;

use crate::commands::Global;
use anyhow::bail;
pub use args::BenchArgs;
use args::{Backend, Scenario};
use rig::Rig;

/// Runs the benchmark.
pub fn run(args: BenchArgs, global: &Global) -> anyhow::Result<()> {
    let mut cfg = global.config()?;
    if args.backend == Backend::Redis {
        // A benchmark makes and deletes streams of its own: the operator's user.
        global.authenticate(&mut cfg, crate::commands::acl::ADMIN)?;
    }
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if args.rate == Some(0) {
        bail!("--rate must be at least 1 message per second");
    }
    if args.batch == 0 || args.groups == 0 || args.queue_bound == 0 || args.threads == 0 {
        bail!("--batch, --groups, --queue-bound and --threads must be at least 1");
    }
    if args.plot.is_some() && matches!(args.scenario, Scenario::Stall | Scenario::Hub) {
        bail!(
            "--plot draws a latency distribution: it is for throughput, fanout, latency and \
             isolation, not {}",
            args.scenario.name()
        );
    }
    let rt = crate::commands::runtime(args.threads)?;
    rt.block_on(async move {
        let rig = Rig::new(&args, cfg).await?;
        let res = match args.scenario {
            Scenario::Throughput | Scenario::Fanout | Scenario::Latency => {
                delivery::delivery_bench(&args, &rig).await
            }
            Scenario::Isolation => isolation::isolation_bench(&args, &rig).await,
            Scenario::Stall => stall::stall_bench(&args, &rig).await,
            Scenario::Hub => hub::hub_bench(&args, &rig).await,
        };
        rig.cleanup().await;
        res
    })
}
