//! The `dualbus stress` scenarios, shortened: nothing lost, duplicated or out of order, and the
//! fail-over and fail-back both happen.

use dualbus_testkit::stress::{run, Scenario, StressOptions, StressReport};
use std::time::Duration;

/// One scenario at a time: each starts two Redis servers and loads the machine, and the
/// heartbeat must not mistake another test's load for a hung broker.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scenario(opts: StressOptions) -> StressReport {
    let _one_at_a_time = SERIAL.lock().await;
    let report = tokio::time::timeout(Duration::from_secs(120), run(&opts, &|_| {}))
        .await
        .expect("no hang")
        .expect("run");
    assert!(report.published > 0, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.duplicated, 0, "{report:?}");
    assert_eq!(report.reordered, 0, "{report:?}");
    assert_eq!(report.delivered, report.published, "{report:?}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_either_broker_fails_over_and_back() {
    let mut opts = StressOptions::new(Scenario::Crash);
    opts.kills = 2;
    let r = scenario(opts).await;
    assert!(r.failovers >= 2 && r.failbacks >= 2, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_broker_fails_over_and_back() {
    let mut opts = StressOptions::new(Scenario::Hang);
    opts.hang = Duration::from_millis(800);
    let r = scenario(opts).await;
    assert!(r.failovers >= 1 && r.failbacks >= 1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_crash_keeps_every_logic_message() {
    let mut opts = StressOptions::new(Scenario::FlashCrash);
    opts.rate = 200;
    opts.burst = Duration::from_secs(2);
    scenario(opts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_gets_its_whole_backlog() {
    let mut opts = StressOptions::new(Scenario::SlowConsumer);
    opts.backlog = 20_000;
    // This scenario is about the backlog, not failover: in a debug build the 50,000 msgs/s
    // flood can delay a PING past the default 100 ms and switch buses, and a group that lags
    // behind then gets the re-sent window before its backlog (docs/guarantees.md, Order).
    opts.heartbeat_timeout = Some(Duration::from_secs(2));
    let r = scenario(opts).await;
    assert_eq!(r.failovers, 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_batch_is_taken_over_by_the_other_instance() {
    let r = scenario(StressOptions::new(Scenario::ConsumerCrash)).await;
    assert!(r.redelivered > 0, "the batch was taken over: {r:?}");
}
