//! The conformance tests. Each takes a [`TransportFactory`] and asserts what was delivered, in
//! what order and how many times; none asserts how fast.

use crate::{wait_until, TransportFactory};
use dualbus_bus::{
    handler_fn, BusId, DualBus, Handler, HandlerError, RequestError, SubscribeOptions,
};
use dualbus_core::{
    Backpressure, Encoding, Envelope, EventKind, Mode, Priority, PublishError, StartFrom,
    SubscribeSpec, Topic,
};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// Records every handled message.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Envelope>>>);

impl Recorder {
    fn handler(&self) -> impl Handler {
        let r = self.0.clone();
        handler_fn(move |m| {
            r.lock().push(m.clone());
            Ok(())
        })
    }
    fn len(&self) -> usize {
        self.0.lock().len()
    }
    fn all(&self) -> Vec<Envelope> {
        self.0.lock().clone()
    }
    fn ns(&self) -> Vec<u64> {
        self.all().iter().map(n_of).collect()
    }
}

fn n_of(e: &Envelope) -> u64 {
    e.enc.to_json_value(&e.payload).expect("decodes")["n"]
        .as_u64()
        .expect("payload has n")
}

fn opts(group: &str, patterns: &[&str]) -> SubscribeOptions {
    SubscribeOptions::new(group, patterns).expect("valid patterns")
}

async fn publish_n(bus: &DualBus, kind: EventKind, topic: &str, n: u64) {
    for i in 0..n {
        bus.publish(kind.clone(), topic, &json!({ "n": i }))
            .await
            .expect("publish");
    }
}

/// Publishes like [`publish_n`] and returns once the broker has every message (the last one is
/// confirmed; a transport writes in order).
async fn publish_n_confirmed(bus: &DualBus, kind: EventKind, topic: &str, n: u64) {
    publish_n(bus, kind.clone(), topic, n - 1).await;
    let last = bus
        .envelope(kind, topic, Priority::Normal, &json!({ "n": n - 1 }))
        .expect("envelope");
    bus.publish_confirmed(last).await.expect("publish");
}

/// Reads until `n` deliveries arrived (a read returns at least one, not all that are ready).
async fn read_n(
    sub: &mut Box<dyn dualbus_core::Subscriber>,
    n: usize,
) -> Vec<dualbus_core::Delivery> {
    let mut out = Vec::new();
    while out.len() < n {
        let b = tokio::time::timeout(LIMIT, sub.next_batch(n - out.len()))
            .await
            .expect("messages within the limit")
            .expect("read");
        out.extend(b.deliveries);
    }
    out
}

/// Gives subscriptions a moment to be registered on transports that create groups
/// asynchronously (a no-op cost on the embedded one).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// The Engine Logic bus's dead letters (up to 10), once there is at least one.
async fn first_dead_letters(consumer: &DualBus) -> Vec<dualbus_core::DeadLetter> {
    let start = std::time::Instant::now();
    loop {
        let letters = consumer.dead_letters(BusId::Logic, 10).await.unwrap();
        if !letters.is_empty() {
            return letters;
        }
        assert!(start.elapsed() < LIMIT, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every group receives every matching message.
pub async fn fan_out_every_group_gets_every_message(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let publisher = pair.bus("features");
    let mut recs = Vec::new();
    let mut subs = Vec::new();
    for g in ["ml", "factor", "strategy"] {
        let rec = Recorder::default();
        let bus = pair.bus(g);
        subs.push(
            bus.subscribe(opts(g, &["feature_vector.>"]), rec.handler())
                .await
                .unwrap(),
        );
        recs.push(rec);
    }
    settle().await;
    publish_n(
        &publisher,
        EventKind::FeatureVector,
        "feature_vector.BTCUSDT",
        200,
    )
    .await;
    for rec in &recs {
        wait_until("every group has 200 messages", LIMIT, || rec.len() >= 200).await;
    }
    settle().await;
    for rec in &recs {
        assert_eq!(rec.ns(), (0..200).collect::<Vec<_>>());
    }
}

/// Consumers of one group share its messages: each message goes to exactly one of them.
pub async fn load_balancing_within_a_group(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let publisher = pair.bus("hub");
    let seen: Arc<Mutex<Vec<(usize, u64)>>> = Default::default();
    let mut subs = Vec::new();
    for c in 0..2usize {
        let bus = pair.bus_with("risk", &format!("risk-{c}"), pair.config());
        let seen = seen.clone();
        let h = handler_fn(move |m| {
            seen.lock().push((c, n_of(m)));
            // Slow enough that one consumer cannot take everything.
            std::thread::sleep(Duration::from_micros(300));
            Ok(())
        });
        subs.push(
            bus.subscribe(opts("risk", &["order_request.>"]).batch_max(4), h)
                .await
                .unwrap(),
        );
    }
    settle().await;
    publish_n(
        &publisher,
        EventKind::OrderRequest,
        "order_request.ETHUSDT",
        400,
    )
    .await;
    wait_until("400 messages handled", LIMIT, || seen.lock().len() >= 400).await;
    settle().await;
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 400, "each message handled exactly once");
    let distinct: HashSet<u64> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(distinct.len(), 400);
    for c in 0..2 {
        let share = seen.iter().filter(|(cc, _)| *cc == c).count();
        assert!(share > 0, "consumer {c} got no messages: {share}");
    }
}

/// Messages of one source arrive in its sequence order.
pub async fn per_source_order(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let a = pair.bus("vpin");
    let b = pair.bus("ml");
    let rec = Recorder::default();
    let _s = pair
        .bus("strategy")
        .subscribe(opts("strategy", &["vpin_calculation.>"]), rec.handler())
        .await
        .unwrap();
    settle().await;
    for i in 0..500u64 {
        a.publish(
            EventKind::VpinCalculation,
            "vpin_calculation.BTC",
            &json!({"n": i}),
        )
        .await
        .unwrap();
        b.publish(
            EventKind::VpinCalculation,
            "vpin_calculation.ETH",
            &json!({"n": i}),
        )
        .await
        .unwrap();
    }
    wait_until("1000 messages", LIMIT, || rec.len() >= 1000).await;
    let mut last: HashMap<String, u64> = HashMap::new();
    for e in rec.all() {
        if let Some(prev) = last.insert(e.src.to_string(), e.seq) {
            assert!(e.seq > prev, "{}: seq {} after {}", e.src, e.seq, prev);
        }
    }
    assert_eq!(last.len(), 2);
}

/// A message whose handler fails is not acknowledged and comes back after the idle timeout;
/// once handled it is acknowledged and not delivered again.
pub async fn ack_after_success_and_redelivery_after_failure(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let publisher = pair.bus("ml");
    let attempts: Arc<Mutex<HashMap<u64, u32>>> = Default::default();
    let a2 = attempts.clone();
    let h = handler_fn(move |m| {
        let n = n_of(m);
        let mut a = a2.lock();
        let k = a.entry(n).or_insert(0);
        *k += 1;
        if n == 3 && *k == 1 {
            return Err(HandlerError::from("model not warmed up"));
        }
        Ok(())
    });
    let consumer = pair.bus("strategy");
    let _s = consumer
        .subscribe(
            opts("strategy", &["ml_prediction.>"]).redelivery(Duration::from_millis(200), 5),
            h,
        )
        .await
        .unwrap();
    settle().await;
    publish_n(&publisher, EventKind::MlPrediction, "ml_prediction.BTC", 10).await;
    wait_until("message 3 redelivered", LIMIT, || {
        attempts.lock().get(&3).copied() == Some(2)
    })
    .await;
    // Wait past another idle timeout: nothing may come back once acknowledged.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let a = attempts.lock().clone();
    assert_eq!(a.len(), 10);
    for (n, k) in &a {
        assert_eq!(
            *k,
            if *n == 3 { 2 } else { 1 },
            "message {n} handled {k} times"
        );
    }
    let c = consumer.counters(BusId::Logic);
    assert!(c.redelivered >= 1, "{c:?}");
    assert_eq!(c.failed, 1, "{c:?}");
}

/// Messages a consumer took but never acknowledged (it died) go to another consumer of the
/// group after the idle timeout.
pub async fn dead_consumer_messages_are_reclaimed(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let bus = pair.bus("risk");
    let stream = bus.route(&EventKind::OrderRequest, Priority::Normal).stream;
    let dead_letter = bus.router().dead_stream(BusId::Logic);
    let mut spec = SubscribeSpec::new("venue", "venue-a", vec![stream.clone()], dead_letter);
    spec.idle_timeout = Duration::from_millis(150);
    let mut a = pair.logic.subscribe(spec.clone()).await.unwrap();
    publish_n(&bus, EventKind::OrderRequest, "order_request.BTC", 5).await;
    let got = read_n(&mut a, 5).await;
    assert_eq!(got.len(), 5);
    drop(a); // dies without acknowledging

    spec.consumer = "venue-b".into();
    let mut b = pair.logic.subscribe(spec).await.unwrap();
    let mut reclaimed = Vec::new();
    while reclaimed.len() < 5 {
        let batch = tokio::time::timeout(LIMIT, b.next_batch(100))
            .await
            .expect("reclaimed within the limit")
            .unwrap();
        for d in batch.deliveries {
            assert_eq!(d.attempt, 2, "second delivery");
            reclaimed.push((d.stream, d.id, n_of(&d.envelope)));
        }
    }
    let ns: Vec<u64> = reclaimed.iter().map(|r| r.2).collect();
    assert_eq!(ns, vec![0, 1, 2, 3, 4]);
    let ids: Vec<_> = reclaimed.iter().map(|r| (r.0, r.1)).collect();
    b.ack(&ids).await.unwrap();
}

/// A consumer that subscribes again under its own name first gets its own pending messages.
pub async fn restarted_consumer_rereads_its_own_pending(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let bus = pair.bus("portfolio");
    let stream = bus
        .route(&EventKind::PortfolioUpdate, Priority::Normal)
        .stream;
    let spec = SubscribeSpec::new(
        "analytics",
        "analytics-1",
        vec![stream],
        bus.router().dead_stream(BusId::Logic),
    );
    let mut a = pair.logic.subscribe(spec.clone()).await.unwrap();
    publish_n_confirmed(&bus, EventKind::PortfolioUpdate, "portfolio_update.book", 3).await;
    let first = read_n(&mut a, 2).await;
    assert_eq!(first.len(), 2);
    drop(a);
    let mut again = pair.logic.subscribe(spec).await.unwrap();
    let mut ns = Vec::new();
    let mut acks = Vec::new();
    while ns.len() < 3 {
        let b = tokio::time::timeout(LIMIT, again.next_batch(10))
            .await
            .expect("pending re-read")
            .unwrap();
        for d in b.deliveries {
            ns.push((n_of(&d.envelope), d.attempt));
            acks.push((d.stream, d.id));
        }
    }
    assert_eq!(
        ns,
        vec![(0, 2), (1, 2), (2, 1)],
        "own pending first, then new"
    );
    again.ack(&acks).await.unwrap();
}

/// After `max_deliveries` failed deliveries a message goes to the dead-letter stream with the
/// reason, and the others are not held up.
pub async fn dead_letter_after_max_deliveries(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let publisher = pair.bus("strategy");
    let tries = Arc::new(AtomicU64::new(0));
    let t2 = tries.clone();
    let ok = Recorder::default();
    let ok2 = ok.0.clone();
    let h = handler_fn(move |m| {
        if n_of(m) == 1 {
            t2.fetch_add(1, Ordering::SeqCst);
            return Err(HandlerError::from("price is NaN"));
        }
        ok2.lock().push(m.clone());
        Ok(())
    });
    let consumer = pair.bus("risk");
    let _s = consumer
        .subscribe(
            opts("risk", &["strategy_signal.>"]).redelivery(Duration::from_millis(100), 3),
            h,
        )
        .await
        .unwrap();
    settle().await;
    publish_n(
        &publisher,
        EventKind::StrategySignal,
        "strategy_signal.SOL",
        3,
    )
    .await;
    let letters = first_dead_letters(&consumer).await;
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l.group, "risk");
    assert_eq!(l.deliveries, 3);
    assert!(l.reason.contains("price is NaN"), "reason: {}", l.reason);
    assert_eq!(n_of(l.envelope.as_ref().expect("envelope kept")), 1);
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    assert_eq!(ok.ns(), vec![0, 2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        tries.load(Ordering::SeqCst),
        3,
        "not delivered after dead-lettering"
    );
    assert!(consumer.counters(BusId::Logic).dead_lettered >= 1);
}

/// A message that keeps failing waits longer before each redelivery: the idle timeout after
/// its first delivery, then twice that, up to the backoff cap; after its last delivery it is
/// dead-lettered once the idle timeout has passed. The other messages are handled once.
pub async fn redelivery_backs_off(f: &dyn TransportFactory) {
    const IDLE: Duration = Duration::from_millis(150);
    const CAP: Duration = Duration::from_millis(500);
    let pair = f.pair().await;
    let publisher = pair.bus("strategy");
    let attempts: Arc<Mutex<Vec<std::time::Instant>>> = Default::default();
    let a2 = attempts.clone();
    let ok = Recorder::default();
    let ok2 = ok.0.clone();
    let h = handler_fn(move |m| {
        if n_of(m) == 1 {
            a2.lock().push(std::time::Instant::now());
            return Err(HandlerError::from("venue down"));
        }
        ok2.lock().push(m.clone());
        Ok(())
    });
    let consumer = pair.bus("risk");
    let _s = consumer
        .subscribe(
            opts("risk", &["strategy_signal.>"])
                .redelivery(IDLE, 5)
                .backoff_max(CAP),
            h,
        )
        .await
        .unwrap();
    settle().await;
    publish_n(
        &publisher,
        EventKind::StrategySignal,
        "strategy_signal.SOL",
        3,
    )
    .await;
    let letters = first_dead_letters(&consumer).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].deliveries, 5);
    assert!(
        letters[0].reason.contains("venue down"),
        "{}",
        letters[0].reason
    );
    assert_eq!(ok.ns(), vec![0, 2]);
    let at = attempts.lock().clone();
    assert_eq!(at.len(), 5, "delivered five times");
    // The waits the transport keeps between deliveries: 150, 300, then the cap twice. A wait
    // runs from when the broker handed the message out, a little before the handler saw it,
    // so each gap is checked against three quarters of its wait; without the backoff every
    // gap is about the idle timeout and the second one fails.
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    let waits = [IDLE, IDLE * 2, CAP, CAP];
    for (k, (gap, wait)) in gaps.iter().zip(waits).enumerate() {
        assert!(
            *gap >= wait * 3 / 4,
            "redelivery {} came {gap:?} after the one before; it waits {wait:?} (gaps {gaps:?})",
            k + 2
        );
    }
}

/// A handler that panics fails that message only: its reader goes on with the next ones, the
/// message comes back and, panicking every time, is dead-lettered with the panic's text; the
/// panics are counted. A message that panicked once and then succeeds is handled.
pub async fn a_panicking_handler_fails_its_message_not_its_reader(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let publisher = pair.bus("strategy");
    let tries = Arc::new(AtomicU64::new(0));
    let t2 = tries.clone();
    let once = Arc::new(AtomicU64::new(0));
    let once2 = once.clone();
    let ok = Recorder::default();
    let ok2 = ok.0.clone();
    let h = handler_fn(move |m| {
        match n_of(m) {
            1 => {
                t2.fetch_add(1, Ordering::SeqCst);
                panic!("index out of range in the sizing model");
            }
            3 if once2.fetch_add(1, Ordering::SeqCst) == 0 => panic!("a one-off panic"),
            _ => {}
        }
        ok2.lock().push(m.clone());
        Ok(())
    });
    let consumer = pair.bus("risk");
    let _s = consumer
        .subscribe(
            opts("risk", &["strategy_signal.>"]).redelivery(Duration::from_millis(100), 3),
            h,
        )
        .await
        .unwrap();
    settle().await;
    publish_n(
        &publisher,
        EventKind::StrategySignal,
        "strategy_signal.SOL",
        5,
    )
    .await;
    let mut letters = Vec::new();
    let start = std::time::Instant::now();
    while letters.is_empty() || ok.len() < 4 {
        assert!(
            start.elapsed() < LIMIT,
            "handled {:?}, dead letters {letters:?}",
            ok.ns()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        letters = consumer.dead_letters(BusId::Logic, 10).await.unwrap();
    }
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l.deliveries, 3);
    assert!(
        l.reason
            .contains("the handler panicked: index out of range in the sizing model"),
        "reason: {}",
        l.reason
    );
    assert_eq!(n_of(l.envelope.as_ref().expect("envelope kept")), 1);
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    let mut ns = ok.ns();
    ns.sort_unstable();
    assert_eq!(ns, vec![0, 2, 3, 4]);
    let c = consumer.counters(BusId::Logic);
    assert_eq!(c.panicked, 4, "{c:?}");
    assert_eq!(c.failed, 4, "{c:?}");
}

/// The same (`src`, `inst`, `seq`) published twice is handled once.
pub async fn duplicates_are_suppressed(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let publisher = pair.bus("collateral");
    let rec = Recorder::default();
    let consumer = pair.bus("risk");
    let _s = consumer
        .subscribe(opts("risk", &["margin_call.>"]), rec.handler())
        .await
        .unwrap();
    settle().await;
    let env = publisher
        .envelope(
            EventKind::MarginCall,
            "margin_call.book",
            Priority::Critical,
            &json!({"n": 7}),
        )
        .unwrap();
    publisher.publish_envelope(env.clone()).await.unwrap();
    publisher.publish_envelope(env.clone()).await.unwrap();
    let next = publisher
        .envelope(
            EventKind::MarginCall,
            "margin_call.book",
            Priority::Critical,
            &json!({"n": 8}),
        )
        .unwrap();
    publisher.publish_envelope(next).await.unwrap();
    publisher.publish_envelope(env).await.unwrap();
    wait_until("two distinct handled", LIMIT, || rec.len() >= 2).await;
    wait_until("two duplicates counted", LIMIT, || {
        consumer.counters(BusId::Logic).duplicates >= 2
    })
    .await;
    assert_eq!(rec.ns(), vec![7, 8]);
    assert_eq!(consumer.counters(BusId::Logic).duplicates, 2);
}

/// A gate that holds handlers until opened.
#[derive(Clone, Default)]
struct Gate(Arc<AtomicBool>);

impl Gate {
    fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let g = self.0.clone();
        async move {
            while !g.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

struct GatedRecorder {
    gate: Gate,
    rec: Recorder,
}

impl Handler for GatedRecorder {
    fn handle(&self, msg: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let wait = self.gate.wait();
        let rec = self.rec.0.clone();
        let msg = msg.clone();
        async move {
            wait.await;
            rec.lock().push(msg);
            Ok(())
        }
    }
}

/// `Block`: at the bound the publisher waits, and resumes when the consumer catches up;
/// nothing is lost.
pub async fn backpressure_block(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let publisher = pair.bus("factor");
    let gate = Gate::default();
    let rec = Recorder::default();
    let consumer = pair.bus("ml");
    let _s = consumer
        .subscribe(
            opts("ml", &["factor_calculation.>"]).bound(10, Backpressure::Block),
            GatedRecorder {
                gate: gate.clone(),
                rec: rec.clone(),
            },
        )
        .await
        .unwrap();
    settle().await;
    let sent = Arc::new(AtomicU64::new(0));
    let sent2 = sent.clone();
    let p = publisher.clone();
    let task = tokio::spawn(async move {
        for i in 0..25u64 {
            p.publish(
                EventKind::FactorCalculation,
                "factor_calculation.all",
                &json!({"n": i}),
            )
            .await
            .unwrap();
            sent2.store(i + 1, Ordering::SeqCst);
        }
    });
    wait_until("10 published", LIMIT, || sent.load(Ordering::SeqCst) >= 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sent.load(Ordering::SeqCst),
        10,
        "publisher must block at the bound"
    );
    assert!(!task.is_finished());
    gate.open();
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("publisher resumes")
        .unwrap();
    wait_until("all 25 handled", LIMIT, || rec.len() >= 25).await;
    assert_eq!(rec.ns(), (0..25).collect::<Vec<_>>());
    assert_eq!(consumer.counters(BusId::Logic).dropped, 0);
}

/// A group whose consumers are all gone (a crashed process: its readers aborted) holds no
/// publisher to its bound: under `Block`, publishing goes on past the bound once the group
/// counts as dead (at once embedded; on Redis once its lease expires). Nothing is taken from
/// the group: a consumer that comes back gets every message, and the bound holds again.
pub async fn dead_group_holds_no_publisher(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let publisher = pair.bus("factor");
    let gate = Gate::default();
    let rec = Recorder::default();
    let consumer = pair.bus("ml");
    let sub = consumer
        .subscribe(
            opts("ml", &["factor_calculation.>"]).bound(10, Backpressure::Block),
            GatedRecorder {
                gate: gate.clone(),
                rec: rec.clone(),
            },
        )
        .await
        .unwrap();
    settle().await;
    publish_n(
        &publisher,
        EventKind::FactorCalculation,
        "factor_calculation.all",
        10,
    )
    .await;
    // The consumer dies holding what it read.
    sub.abort();
    // Forty more: far past the bound of the dead group.
    let p = publisher.clone();
    tokio::time::timeout(LIMIT, async move {
        for i in 10..50u64 {
            p.publish(
                EventKind::FactorCalculation,
                "factor_calculation.all",
                &json!({ "n": i }),
            )
            .await
            .unwrap();
        }
    })
    .await
    .expect("a dead group must not hold the publisher at its bound");
    assert_eq!(publisher.counters(BusId::Logic).dropped, 0);
    // The consumer comes back (under the same name): it gets all fifty, the ten it held
    // included, and nothing twice.
    gate.open();
    let back = Recorder::default();
    let _again = consumer
        .subscribe(
            opts("ml", &["factor_calculation.>"])
                .bound(10, Backpressure::Block)
                .redelivery(Duration::from_millis(200), 5),
            back.handler(),
        )
        .await
        .unwrap();
    wait_until("all 50 handled by the returning consumer", LIMIT, || {
        back.len() >= 50
    })
    .await;
    let mut ns = back.ns();
    ns.sort_unstable();
    assert_eq!(ns, (0..50).collect::<Vec<_>>());
}

/// A new group started at a time gets what the stream holds from that time on: the messages
/// published before it are not given, those after are, in order.
pub async fn start_from_time(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let bus = pair.bus("analytics");
    let stream = bus
        .route(&EventKind::AnalyticsResult, Priority::Normal)
        .stream;
    publish_n_confirmed(&bus, EventKind::AnalyticsResult, "analytics_result.pnl", 5).await;
    // Clear of the millisecond of the last one either side.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    for n in 5..10u64 {
        let env = bus
            .envelope(
                EventKind::AnalyticsResult,
                "analytics_result.pnl",
                Priority::Normal,
                &json!({ "n": n }),
            )
            .expect("envelope");
        bus.publish_confirmed(env).await.expect("publish");
    }
    let spec = |group: &str, start: StartFrom| {
        let mut s = SubscribeSpec::new(
            group,
            format!("{group}-1").as_str(),
            vec![stream.clone()],
            bus.router().dead_stream(BusId::Logic),
        );
        s.start = start;
        s
    };
    let mut since = pair
        .logic
        .subscribe(spec("since", StartFrom::Time(at)))
        .await
        .unwrap();
    let got: Vec<u64> = read_n(&mut since, 5)
        .await
        .iter()
        .map(|d| n_of(&d.envelope))
        .collect();
    assert_eq!(got, vec![5, 6, 7, 8, 9]);
    // Nothing more for it.
    let more = tokio::time::timeout(Duration::from_millis(300), since.next_batch(10)).await;
    assert!(
        more.map_or(true, |b| b.map_or(true, |b| b.deliveries.is_empty())),
        "only what was published from the time on"
    );
    // A time before everything is the whole stream; one after it, nothing yet.
    let mut all = pair
        .logic
        .subscribe(spec("all", StartFrom::Time(1)))
        .await
        .unwrap();
    assert_eq!(read_n(&mut all, 10).await.len(), 10);
    let mut later = pair
        .logic
        .subscribe(spec("later", StartFrom::Time(at + 3_600_000)))
        .await
        .unwrap();
    let none = tokio::time::timeout(Duration::from_millis(300), later.next_batch(10)).await;
    assert!(
        none.map_or(true, |b| b.map_or(true, |b| b.deliveries.is_empty())),
        "nothing is from the future"
    );
}

/// `DropOldest`: at the bound the group's oldest messages are dropped and counted; the
/// publisher never waits.
pub async fn backpressure_drop_oldest(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let bus = pair.bus("analytics");
    let stream = bus
        .route(&EventKind::AnalyticsResult, Priority::Normal)
        .stream;
    let mut spec = SubscribeSpec::new(
        "ws",
        "ws-1",
        vec![stream],
        bus.router().dead_stream(BusId::Logic),
    );
    spec.queue_bound = 10;
    spec.backpressure = Backpressure::DropOldest;
    let mut sub = pair.logic.subscribe(spec).await.unwrap();
    publish_n_confirmed(&bus, EventKind::AnalyticsResult, "analytics_result.pnl", 25).await;
    let mut ns = Vec::new();
    let mut acks = Vec::new();
    while ns.len() < 10 {
        let b = tokio::time::timeout(LIMIT, sub.next_batch(100))
            .await
            .unwrap()
            .unwrap();
        for d in b.deliveries {
            ns.push(n_of(&d.envelope));
            acks.push((d.stream, d.id));
        }
    }
    sub.ack(&acks).await.unwrap();
    assert_eq!(ns, (15..25).collect::<Vec<_>>(), "the newest 10 survive");
    assert_eq!(pair.logic.stats().dropped, 15);
    assert_eq!(bus.counters(BusId::Logic).dropped, 15);
}

/// `Reject`: at the bound the publish fails with an error naming the group; nothing is
/// appended.
pub async fn backpressure_reject(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let bus = pair.bus("risk");
    let stream = bus
        .route(&EventKind::PositionChange, Priority::Normal)
        .stream;
    let mut spec = SubscribeSpec::new(
        "collateral",
        "collateral-1",
        vec![stream],
        bus.router().dead_stream(BusId::Logic),
    );
    spec.queue_bound = 10;
    spec.backpressure = Backpressure::Reject;
    let mut sub = pair.logic.subscribe(spec).await.unwrap();
    publish_n_confirmed(&bus, EventKind::PositionChange, "position_change.BTC", 10).await;
    let err = bus
        .publish(
            EventKind::PositionChange,
            "position_change.BTC",
            &json!({"n": 10}),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("collateral") && text.contains("full"),
        "{text}"
    );
    match err {
        dualbus_bus::BusError::Publish {
            bus: BusId::Logic,
            source: PublishError::Full { bound: 10, .. },
        } => {}
        other => panic!("unexpected error {other:?}"),
    }
    let b = sub.next_batch(100).await.unwrap();
    let ns: Vec<u64> = b.deliveries.iter().map(|d| n_of(&d.envelope)).collect();
    assert_eq!(ns, (0..10).collect::<Vec<_>>());
    let acks: Vec<_> = b.deliveries.iter().map(|d| (d.stream, d.id)).collect();
    sub.ack(&acks).await.unwrap();
    sub.close().await.unwrap(); // acknowledgements may be batched: send them now
                                // Room again.
    bus.publish(
        EventKind::PositionChange,
        "position_change.BTC",
        &json!({"n": 11}),
    )
    .await
    .unwrap();
}

/// Fast mode: a consumer further behind than its lag limit jumps to the head and is told how
/// many messages it skipped; it then receives new messages.
pub async fn fast_mode_skips_to_head(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let hub = pair.bus("hub");
    let stream = hub.route(&EventKind::MarketData, Priority::Normal).stream;
    let mut spec = SubscribeSpec::new(
        "websocket",
        "websocket-1",
        vec![stream],
        hub.router().dead_stream(BusId::MarketData),
    );
    spec.mode = Mode::Fast;
    spec.lag_limit = 100;
    let mut sub = pair.md.subscribe(spec).await.unwrap();
    publish_n_confirmed(
        &hub,
        EventKind::MarketData,
        "market_data.trade.BTCUSDT",
        1000,
    )
    .await;
    let b = sub.next_batch(10).await.unwrap();
    assert_eq!(b.skipped, 1000, "told how many were skipped");
    assert!(b.deliveries.is_empty());
    hub.publish(
        EventKind::MarketData,
        "market_data.trade.BTCUSDT",
        &json!({"n": 1000}),
    )
    .await
    .unwrap();
    let b = tokio::time::timeout(LIMIT, sub.next_batch(10))
        .await
        .unwrap()
        .unwrap();
    let ns: Vec<u64> = b.deliveries.iter().map(|d| n_of(&d.envelope)).collect();
    assert_eq!(ns, vec![1000]);
    assert_eq!(pair.md.stats().skipped, 1000);
}

/// Every kind lands on its bus (docs/architecture.md, "Buses and routing by kind") and nowhere
/// else; overrides apply.
pub async fn every_kind_is_routed_to_its_bus(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let mut cfg = pair.config();
    cfg.routes.insert("my_quotes".into(), "md".into());
    let bus = pair.bus_with("router", "router-1", cfg);
    let mut kinds: Vec<EventKind> = EventKind::KNOWN.to_vec();
    kinds.push(EventKind::parse("my_quotes").unwrap());
    kinds.push(EventKind::parse("my_signal").unwrap());
    for kind in kinds {
        let expected = match kind.as_str() {
            "market_data" | "price_update" | "trade_execution" | "my_quotes" => BusId::MarketData,
            _ => BusId::Logic,
        };
        let topic = format!("{kind}.X");
        bus.publish(kind.clone(), &topic, &json!({"n": 0}))
            .await
            .unwrap();
        let route = bus.route(&kind, Priority::Normal);
        assert_eq!(route.bus, expected, "{kind}");
        for b in BusId::ALL {
            let transport = if b == BusId::MarketData {
                &pair.md
            } else {
                &pair.logic
            };
            let mut spec = SubscribeSpec::new(
                format!("probe-{kind}"),
                "probe-1",
                vec![route.stream.clone()],
                bus.router().dead_stream(b),
            );
            spec.start = StartFrom::Oldest;
            let mut sub = transport.subscribe(spec).await.unwrap();
            let got = tokio::time::timeout(Duration::from_millis(300), sub.next_batch(10)).await;
            let found: Vec<Envelope> = match got {
                Ok(Ok(batch)) => batch
                    .deliveries
                    .iter()
                    .map(|d| (*d.envelope).clone())
                    .collect(),
                _ => Vec::new(),
            };
            let here = found.iter().any(|e| e.kind == kind);
            assert_eq!(here, b == expected, "{kind} on the {b} bus: {here}");
        }
    }
}

/// A critical message overtakes a backlog of bulk logic traffic: it has its own stream and
/// reader.
pub async fn priority_lane_overtakes_bulk_traffic(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let publisher = pair.bus("strategy");
    let risk = pair.bus("risk");
    let order: Arc<Mutex<Vec<EventKind>>> = Default::default();
    let o2 = order.clone();
    let h = handler_fn(move |m| {
        o2.lock().push(m.kind.clone());
        if m.kind == EventKind::StrategySignal {
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    });
    let _s = risk
        .subscribe(
            opts("risk", &["strategy_signal.>", "risk_alert.>"]).batch_max(16),
            h,
        )
        .await
        .unwrap();
    settle().await;
    const BULK: usize = 1000;
    let envs: Vec<Envelope> = (0..BULK)
        .map(|i| {
            publisher
                .envelope(
                    EventKind::StrategySignal,
                    "strategy_signal.BTC",
                    Priority::Normal,
                    &json!({"n": i}),
                )
                .unwrap()
        })
        .collect();
    publisher.publish_batch(envs).await.unwrap();
    wait_until("bulk started", LIMIT, || !order.lock().is_empty()).await;
    publisher
        .publish(
            EventKind::RiskAlert,
            "risk_alert.BTC",
            &json!({"n": 0, "rule": "drawdown"}),
        )
        .await
        .unwrap();
    wait_until("alert handled", LIMIT, || {
        order.lock().contains(&EventKind::RiskAlert)
    })
    .await;
    let pos = order
        .lock()
        .iter()
        .position(|k| *k == EventKind::RiskAlert)
        .unwrap();
    assert!(
        pos < BULK / 2,
        "the alert was handled after {pos} of {BULK} bulk messages"
    );
}

struct Doubler(DualBus);

impl Handler for Doubler {
    fn handle(&self, msg: &Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let bus = self.0.clone();
        let msg = msg.clone();
        async move {
            let x = n_of(&msg);
            bus.reply(&msg, &json!({"n": x * 2}))
                .await
                .map_err(|e| HandlerError(e.to_string()))
        }
    }
}

/// A request gets its reply, matched by correlation id, even with several in flight.
pub async fn request_reply(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let server = pair.bus("hub");
    let _s = server
        .subscribe(
            opts("hub", &["snapshot_request.>"]),
            Doubler(server.clone()),
        )
        .await
        .unwrap();
    settle().await;
    let client = pair.bus("features");
    let kind = EventKind::parse("snapshot_request").unwrap();
    let mut handles = Vec::new();
    for i in 0..20u64 {
        let c = client.clone();
        let k = kind.clone();
        handles.push(tokio::spawn(async move {
            let r = c
                .request(k, "snapshot_request.BTC", &json!({"n": i}), Some(LIMIT))
                .await
                .unwrap();
            (i, r)
        }));
    }
    for h in handles {
        let (i, reply) = h.await.unwrap();
        assert_eq!(n_of(&reply), i * 2);
        assert!(reply.corr.is_some());
        assert_eq!(&*reply.src, "hub");
    }
}

/// A request nobody answers fails with a timeout error naming it.
pub async fn request_timeout(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let client = pair.bus("backtesting");
    let err = client
        .request(
            EventKind::parse("history_request").unwrap(),
            "history_request.BTC",
            &json!({"n": 1}),
            Some(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("history_request") && text.contains("200ms"),
        "{text}"
    );
}

/// A receiver decodes each payload by the envelope's own `enc`, whatever its own config says.
pub async fn msgpack_and_json_decode_by_envelope(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let mut cfg = pair.config();
    cfg.encoding = "msgpack".into();
    let mp = pair.bus_with("ml", "ml-1", cfg);
    let js = pair.bus("features");
    let rec = Recorder::default();
    let _s = pair
        .bus("strategy")
        .subscribe(opts("strategy", &["ml_prediction.>"]), rec.handler())
        .await
        .unwrap();
    settle().await;
    mp.publish(
        EventKind::MlPrediction,
        "ml_prediction.BTC",
        &json!({"n": 1, "prob_up": 0.6}),
    )
    .await
    .unwrap();
    js.publish(
        EventKind::MlPrediction,
        "ml_prediction.BTC",
        &json!({"n": 2, "prob_up": 0.4}),
    )
    .await
    .unwrap();
    wait_until("2 messages", LIMIT, || rec.len() >= 2).await;
    let mut all = rec.all();
    all.sort_by_key(n_of);
    assert_eq!(all[0].enc, Encoding::Msgpack);
    assert_eq!(all[1].enc, Encoding::Json);
    assert_eq!(
        all[0].enc.to_json_value(&all[0].payload).unwrap()["prob_up"],
        0.6
    );
}

/// A new group starts after the newest entry by default, or at the oldest when asked.
pub async fn new_group_starts_at_newest_or_oldest(f: &dyn TransportFactory) {
    let pair = f.pair().await;
    let bus = pair.bus("portfolio");
    publish_n(&bus, EventKind::PortfolioUpdate, "portfolio_update.book", 3).await;
    let newest = Recorder::default();
    let oldest = Recorder::default();
    let _a = pair
        .bus("analytics")
        .subscribe(opts("analytics", &["portfolio_update.>"]), newest.handler())
        .await
        .unwrap();
    let _b = pair
        .bus("websocket")
        .subscribe(
            opts("websocket", &["portfolio_update.>"]).start(StartFrom::Oldest),
            oldest.handler(),
        )
        .await
        .unwrap();
    settle().await;
    let env = bus
        .stamp(
            EventKind::PortfolioUpdate,
            Topic::new("portfolio_update.book").unwrap(),
            Priority::Normal,
            Encoding::Json,
            bytes::Bytes::from_static(br#"{"n": 3}"#),
        )
        .unwrap();
    bus.publish_envelope(env).await.unwrap();
    wait_until("oldest group has 4", LIMIT, || oldest.len() >= 4).await;
    wait_until("newest group has 1", LIMIT, || newest.len() >= 1).await;
    settle().await;
    assert_eq!(oldest.ns(), vec![0, 1, 2, 3]);
    assert_eq!(newest.ns(), vec![3]);
}

/// `[md] partitions = 4`: the hub's market data goes to one stream per partition, each
/// symbol's messages to its partition's stream; two instances of one group reading two
/// partitions each handle every message exactly once between them, each symbol in one instance
/// and in order; a group reading every partition gets everything, in order per symbol.
pub async fn partitions_split_symbols_between_instances(f: &dyn TransportFactory) {
    use dualbus_core::partition::partition_of;
    let pair = f.pair().await;
    let mut cfg = pair.config();
    cfg.md.partitions = 4;
    let hub = pair.bus_with("hub", "hub-1", cfg.clone());
    let symbols: Vec<String> = (0..12).map(|i| format!("SYM{i}USDT")).collect();
    let mut instances = Vec::new();
    let mut subs = Vec::new();
    for (k, parts) in [(1, vec![0, 2]), (2, vec![1, 3])] {
        let rec = Recorder::default();
        let bus = pair
            .bus_with("features", &format!("features-{k}"), cfg.clone())
            .reading_partitions(&parts)
            .unwrap();
        subs.push(
            bus.subscribe(opts("features", &["market_data.>"]), rec.handler())
                .await
                .unwrap(),
        );
        instances.push((parts, rec));
    }
    let all = Recorder::default();
    let risk = pair.bus_with("risk", "risk-1", cfg.clone());
    subs.push(
        risk.subscribe(opts("risk", &["market_data.>"]), all.handler())
            .await
            .unwrap(),
    );
    // A probe group on each partition's stream: it holds its symbols only.
    let mut probes = Vec::new();
    for p in 0..4usize {
        let stream = hub
            .router()
            .kind_streams(BusId::MarketData, &EventKind::MarketData)[p]
            .clone();
        assert_eq!(
            &*stream,
            format!("{}:md:{{p{p}}}:market_data", hub.config().prefix)
        );
        let spec = SubscribeSpec::new(
            format!("probe-{p}"),
            "probe-1",
            vec![stream],
            hub.router().dead_stream(BusId::MarketData),
        );
        probes.push(pair.md.subscribe(spec).await.unwrap());
    }
    settle().await;
    // Batches that mix every symbol, as the hub publishes them.
    const PER_SYMBOL: u64 = 40;
    for n in 0..PER_SYMBOL {
        let batch = symbols
            .iter()
            .map(|s| {
                hub.envelope(
                    EventKind::MarketData,
                    &format!("market_data.trade.{s}"),
                    Priority::Normal,
                    &json!({ "n": n }),
                )
                .unwrap()
            })
            .collect();
        hub.publish_batch(batch).await.unwrap();
    }
    let total = PER_SYMBOL as usize * symbols.len();
    wait_until("both instances and risk have every message", LIMIT, || {
        instances.iter().map(|(_, r)| r.len()).sum::<usize>() >= total && all.len() >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let per_symbol = |msgs: &[Envelope]| -> HashMap<String, Vec<u64>> {
        let mut m: HashMap<String, Vec<u64>> = HashMap::new();
        for e in msgs {
            let sym = e.topic.as_str().rsplit('.').next().unwrap().to_string();
            m.entry(sym).or_default().push(n_of(e));
        }
        m
    };
    let in_order: Vec<u64> = (0..PER_SYMBOL).collect();
    let mut seen = HashSet::new();
    for (parts, rec) in &instances {
        let got = per_symbol(&rec.all());
        for (sym, ns) in &got {
            assert!(
                parts.contains(&partition_of(sym, 4)),
                "{sym} (partition {}) reached the instance of partitions {parts:?}",
                partition_of(sym, 4)
            );
            assert_eq!(ns, &in_order, "{sym}: every message once, in order");
            assert!(seen.insert(sym.clone()), "{sym} handled by two instances");
        }
    }
    assert_eq!(
        seen.len(),
        symbols.len(),
        "every symbol handled by one instance"
    );
    let got = per_symbol(&all.all());
    assert_eq!(got.len(), symbols.len());
    for (sym, ns) in got {
        assert_eq!(
            ns, in_order,
            "{sym}: the group reading everything, in order"
        );
    }
    for (p, sub) in probes.iter_mut().enumerate() {
        let expected = symbols
            .iter()
            .filter(|s| partition_of(s, 4) == p as u32)
            .count()
            * PER_SYMBOL as usize;
        let got = read_n(sub, expected).await;
        assert!(got.iter().all(|d| {
            partition_of(d.envelope.topic.as_str().rsplit('.').next().unwrap(), 4) == p as u32
        }));
    }
    assert!(
        hub.reading_partitions(&[4]).is_err(),
        "partition 4 of 4 refused"
    );
}
